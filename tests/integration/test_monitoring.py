"""Monitoring a run, in a real headless Chromium against a live tower on PostgreSQL with
local pilots: a production of a few minutes (its attempts' times moved back to spread its
life over six minutes) across the whole throughput plot, every summary plot with its axes,
the downloads equal to the API's numbers, the full log of a failed attempt one click from
its job page, `tower report`'s files, a site's history; and pilots that try to abuse the
log store. Screenshots in test-artifacts/monitoring/."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tests.conftest import postgres_database, write_home
from tests.integration.conftest import EXAMPLES, LiveTower
from tests.integration.test_pages import Reader, browser  # noqa: F401  (a fixture)
from tower.model.models import Attempt, AttemptLog, Job, Production
from tower.model.states import JobState
from web.summary import PLOTS

# its module fixture is made once: the module runs in one test process
pytestmark = pytest.mark.xdist_group("monitoring")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "monitoring"
ROOT = Path(__file__).resolve().parents[2]
#: The site's bound on a shipped log, and the largest log the database keeps itself.
LOG_BYTES, IN_DATABASE = 100_000, 2000
#: What the failing job's payload writes: its stdout, then its stderr.
FAILING = """import subprocess, sys
index = int(sys.argv[1])
if index == 2:
    for i in range(3000):
        print(f"line {i} of job 2")
    sys.stdout.flush()
    sys.stderr.write("boom: job 2 fails\\n")
    sys.exit(3)
sys.exit(subprocess.call(sys.argv[2:]))
"""
WROTE = "".join(f"line {i} of job 2\n" for i in range(3000)) + "boom: job 2 fails\n"
#: How long the production's life is made to look.
LIFE = timedelta(minutes=6)


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTower]:
    """A tower whose production `run` has ended (five jobs done, job 2 failed three times),
    its attempts spread over the six minutes after its creation."""
    directory = tmp_path_factory.mktemp("monitoring")
    with postgres_database("monitoring") as url:
        live = LiveTower(write_home(
            directory / "home", url,
            {"pilot": {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5,
                       "idle_timeout": 3, "log_bytes": LOG_BYTES}},
            monitor={"heartbeat_interval": 1, "heartbeat_timeout": 6,
                     "logs_in_database": IN_DATABASE}))
        try:
            script = directory / "failing.py"
            script.write_text(FAILING)
            toysim = ["${python}", str(EXAMPLES / "toysim.py"), "--steering", "steering.json",
                      "--output-dir", "${output_dir}"]
            request = {
                "name": "run", "software": "toysim 1.0",
                "command": ["${python}", str(script), "${index}", *toysim],
                "steering": {"steering.json": (
                    '{"seed": ${seed}, "first_event": ${first_event}, '
                    '"events": ${events}, "output": "decays_${index}.csv"}')},
                "events_total": 6 * 40, "events_per_job": 40, "walltime": "5m",
                "outputs": ["decays_*.csv"],
            }
            path = directory / "run.yaml"
            path.write_text(yaml.safe_dump(request))
            live.submit(path)
            live.drive(live.all_ended, timeout=180)
            _spread_over_minutes(live)
            yield live
        finally:
            live.close()


def _spread_over_minutes(live: LiveTower) -> None:
    """Move the production's creation LIFE back and its attempts evenly across it, as a
    production of a few minutes would have them (rather than waiting minutes)."""
    with Session(live.runtime.engine) as session, session.begin():
        production = session.exec(select(Production).where(Production.name == "run")).one()
        start = utcnow() - LIFE
        production.created_at = start
        attempts = session.exec(select(Attempt).order_by(col(Attempt.id))).all()
        # the successes across the whole life, and the failures too
        for chosen in ([a for a in attempts if a.outcome == "success"],
                       [a for a in attempts if a.outcome != "success"]):
            gap = LIFE * 0.95 / len(chosen)
            for number, attempt in enumerate(chosen, 1):
                attempt.ended_at = start + gap * (number - 0.5)
                attempt.started_at = attempt.ended_at - gap / 2


def _api(tower: LiveTower, path: str) -> Any:
    answer = requests.get(tower.runtime.config.api.url + "/api/v1" + path, timeout=30)
    answer.raise_for_status()
    return answer.json()


@pytest.fixture
def reader(browser: Any, tower: LiveTower) -> Iterator[Reader]:  # noqa: F811
    opened = Reader(browser, tower.runtime.config.api.url)
    yield opened
    opened.page.close()


def _shoot(reader: Reader, path: str, shot: str) -> Any:
    page = reader.open(path, shot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
    return page


def test_a_production_of_minutes_spans_the_whole_throughput_plot(reader: Reader,
                                                                 tower: LiveTower) -> None:
    page = _shoot(reader, "/productions/run", "production")
    plot = page.locator('#run-plots [data-plot="throughput_jobs"] svg')
    axis = plot.locator(".x-axis line").first
    left, right = float(axis.get_attribute("x1")), float(axis.get_attribute("x2"))
    bars = plot.locator("rect.bar")
    xs = sorted(float(bars.nth(i).get_attribute("x")) for i in range(bars.count()))
    assert len(xs) >= 4
    # five jobs done over six minutes: bars from the first fifth to the last, not a sliver
    assert xs[0] < left + (right - left) / 5
    assert xs[-1] > right - (right - left) / 5
    assert sum(float(bars.nth(i).get_attribute("data-value")) for i in range(bars.count())) == 5
    numbers = _api(tower, "/productions/run/plots/throughput_jobs")
    assert numbers["source"] == "attempts" and numbers["step_seconds"] < 60
    assert sum(numbers["series"]["jobs"]) == 5
    events = _api(tower, "/productions/run/plots/throughput_events")
    assert sum(events["series"]["events"]) == 5 * 40


def test_every_summary_plot_renders_with_its_axes(reader: Reader, tower: LiveTower) -> None:
    page = _shoot(reader, "/productions/run", "production-plots")
    for name in PLOTS:
        card = page.locator(f'#run-plots [data-plot="{name}"]')
        svg = card.locator("svg")
        box = svg.bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 150, name
        assert svg.locator(".x-axis text").count() >= 2, name
        assert svg.locator(".y-axis text").count() >= 3, name
        assert "x: " in (svg.locator("text.units").text_content() or ""), name
        assert svg.locator(".legend-entry").count() >= 1, name
        assert svg.locator("rect.bar").count() >= 1, name
        card.screenshot(path=str(ARTIFACTS / f"plot-{name}.png"))
    failures = _api(tower, "/productions/run/plots/failures")
    assert {kind: sum(values) for kind, values in failures["series"].items()} == \
        {"exit_code": 3}
    memory = _api(tower, "/productions/run/plots/peak_memory")
    assert memory["jobs"] == 5 and sum(memory["counts"]) == 5


def test_downloads_have_their_types_and_the_apis_numbers(reader: Reader,
                                                        tower: LiveTower) -> None:
    base = tower.runtime.config.api.url
    for name in PLOTS:
        numbers = _api(tower, f"/productions/run/plots/{name}")
        files = {fmt: requests.get(f"{base}/productions/run/plots/{name}.{fmt}", timeout=30)
                 for fmt in ("svg", "png", "csv", "json")}
        assert files["svg"].headers["Content-Type"].startswith("image/svg+xml")
        assert ET.fromstring(files["svg"].content).tag == "{http://www.w3.org/2000/svg}svg"
        assert files["png"].headers["Content-Type"] == "image/png"
        assert files["png"].content.startswith(b"\x89PNG\r\n\x1a\n")
        assert files["csv"].headers["Content-Type"].startswith("text/csv")
        assert files["json"].headers["Content-Type"].startswith("application/json")
        assert files["json"].json() == numbers
        rows = list(csv.reader(io.StringIO(files["csv"].text)))
        if numbers["kind"] == "histogram":
            assert [[float(v) for v in row] for row in rows[1:]] == [
                [low, high, count] for low, high, count in
                zip(numbers["edges"], numbers["edges"][1:], numbers["counts"], strict=False)]
        else:
            assert rows[0] == ["bin_start", *numbers["series"]]
            assert [row[0] for row in rows[1:]] == numbers["bins"]
            for i, series in enumerate(numbers["series"].values(), 1):
                assert [float(row[i]) for row in rows[1:]] == series
    # and from the page, as a person downloads it
    page = reader.open("/productions/run", "production-download")
    with page.expect_download() as caught:
        page.locator('[data-plot="wall_time"] a', has_text="PNG").click()
    assert caught.value.suggested_filename == "wall_time.png"
    assert Path(caught.value.path()).read_bytes().startswith(b"\x89PNG")


def test_the_whole_log_of_a_failed_attempt_is_one_click_from_its_job_page(
        reader: Reader, tower: LiveTower) -> None:
    [failed] = _api(tower, "/jobs?production=run&state=failed")["jobs"]
    page = _shoot(reader, f"/jobs/{failed['id']}", "job-failed")
    links = page.locator("a.full-log")
    assert links.count() == 3  # each attempt's
    with page.expect_navigation() as navigation:
        links.first.click()
    answer = navigation.value
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    assert answer.body().decode() == WROTE
    page.screenshot(path=str(ARTIFACTS / "job-failed-log.png"))
    # over the database's bound: in the log store, named by the tower
    stored = tower.home / "attempt-logs" / f"{failed['id']}.3.log.gz"
    assert gzip.decompress(stored.read_bytes()).decode() == WROTE
    with Session(tower.runtime.engine) as session:
        kept = session.exec(select(AttemptLog)).all()
    assert len(kept) == 5 + 3  # every attempt's
    assert not any(entry.truncated for entry in kept)
    assert sorted(entry.size for entry in kept if entry.job_id == failed["id"]) == \
        [len(WROTE)] * 3


def test_tower_report_writes_every_file(reader: Reader, tower: LiveTower,
                                        tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "tower.cli", "--config", str(tower.home / "tower.yaml"),
         "report", "run", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    written = {Path(path).name for path in json.loads(done.stdout)["files"]}
    expected = {f"{name}.{fmt}" for name in PLOTS for fmt in ("svg", "png", "csv", "json")}
    assert written == expected | {"index.html"}
    assert {path.name for path in out.iterdir()} == written
    for name in PLOTS:
        assert json.loads((out / f"{name}.json").read_text()) == \
            _api(tower, f"/productions/run/plots/{name}")
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    page = reader.page
    page.goto((out / "index.html").as_uri())
    assert page.locator("figure svg").count() == len(PLOTS)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_the_site_page_shows_its_history_over_a_chosen_window(reader: Reader,
                                                              tower: LiveTower) -> None:
    page = _shoot(reader, "/sites/local?window=1h", "site-1h")
    assert [link.inner_text() for link in page.locator("#windows a").all()][:3] == \
        ["24h", "7d", "30d"]
    history = _api(tower, "/sites/local/history?window=1h")
    assert sum(history["factory"]["submitted"]) >= 1
    assert max(history["pilots"]["running"]) >= 1
    assert page.locator('#site-plots [data-plot="pilots"] rect.bar').count() >= 1
    assert page.locator('#site-plots [data-plot="factory"] rect.bar').count() >= 1
    for window in ("24h", "7d", "30d"):
        shown = reader.open(f"/sites/local?window={window}", f"site-{window}")
        assert shown.locator("#site-plots svg").count() == 6
    missing = requests.get(tower.runtime.config.api.url + "/sites/local?window=2h", timeout=10)
    assert missing.status_code == 404 and "window" in missing.text


# -- a pilot is not trusted -----------------------------------------------------------------

@pytest.fixture
def open_attempt(tower: LiveTower) -> Iterator[tuple[str, int]]:
    """A running attempt of pilot `intruder` without a log yet, and one that ended two
    hours ago: (the URL of the first's log, the job)."""
    with Session(tower.runtime.engine) as session, session.begin():
        job = session.exec(select(Job).where(Job.state == JobState.DONE)).first()
        assert job is not None and job.id is not None
        session.add(Attempt(job_id=job.id, number=99, pilot_id="intruder", site="local"))
        session.add(Attempt(job_id=job.id, number=98, pilot_id="intruder", site="local",
                            outcome="success", ended_at=utcnow() - timedelta(hours=2)))
        job_id = job.id
    try:
        yield (f"{tower.runtime.config.api.url}/api/v1/pilots/intruder/logs/{job_id}/99",
               job_id)
    finally:
        with Session(tower.runtime.engine) as session, session.begin():
            session.execute(delete(AttemptLog).where(col(AttemptLog.attempt) >= 98))
            session.execute(delete(Attempt).where(col(Attempt.number) >= 98))


def _logs(tower: LiveTower) -> int:
    with Session(tower.runtime.engine) as session:
        return len(session.exec(select(AttemptLog)).all())


def _post(url: str, body: Any, **options: Any) -> requests.Response:
    return requests.post(url, data=body, timeout=60,
                         headers={"Content-Type": "application/gzip"}, **options)


def test_a_pilot_cannot_flood_bomb_or_overwrite_the_log_store(
        tower: LiveTower, open_attempt: tuple[str, int]) -> None:
    url, job_id = open_attempt
    before = _logs(tower)

    def gigabyte() -> Iterator[bytes]:
        chunk = b"\x1f" * (1 << 20)
        for _ in range(1024):
            yield chunk

    # the server stops reading at its bound on a body, and says so (or hangs up)
    with contextlib.suppress(requests.ConnectionError):
        assert _post(url, gigabyte()).status_code == 413
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB inflated from ~50 kB
    assert len(bomb) < LOG_BYTES
    answer = _post(url, bomb)
    assert answer.status_code == 413 and answer.json()["field"] == "log"
    answer = _post(url, os.urandom(3 * LOG_BYTES))
    assert answer.status_code == 413
    answer = _post(url, b"not gzip at all")
    assert answer.status_code == 400 and answer.json()["field"] == "log"
    # another pilot's attempt is as absent as one with no such number
    other = url.replace("/pilots/intruder/", "/pilots/someone-else/")
    assert _post(other, gzip.compress(b"mine\n")).status_code == 404
    assert _post(url.replace("/99", "/97"), gzip.compress(b"x\n")).status_code == 404
    assert _logs(tower) == before
    # its own log once; never twice; never long after its attempt ended
    assert _post(url, gzip.compress(b"mine\n"), params={"cut": 0}).status_code == 200
    again = _post(url, gzip.compress(b"replaced\n"))
    assert again.status_code == 409
    assert _post(url.replace("/99", "/98"), gzip.compress(b"late\n")).status_code == 409
    assert _logs(tower) == before + 1
    shown = requests.get(f"{tower.runtime.config.api.url}/jobs/{job_id}/attempts/99/log",
                         timeout=10)
    assert shown.text == "mine\n"
    # the tower still answers everyone
    assert requests.get(f"{tower.runtime.config.api.url}/healthz", timeout=10).ok


def test_finished_attempts_logs_go_after_the_retention(tower: LiveTower) -> None:
    from tower.loops import attempt_logs

    with Session(tower.runtime.engine) as session, session.begin():
        session.execute(update(AttemptLog).values(created_at=utcnow() - timedelta(days=31)))
    with Session(tower.runtime.engine) as session, session.begin():
        assert attempt_logs.prune(session, tower.runtime) == 8
    assert list((tower.home / "attempt-logs").glob("*.gz")) == []
