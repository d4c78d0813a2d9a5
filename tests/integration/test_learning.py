"""Learning from successful attempts, on a live tower: the figures pilots report through the
HTTP API are shown as distributions by `tower show` (text and --json) and the production
page; `tune: auto` changes the memory and walltime of later jobs once enough attempts
succeeded, within the site's pilot shape, and records each change.

Most pilots here are the test speaking the pilot's HTTP API (register, lease, claim,
report), so the figures they report are known; the tower, its API and database are real.
The last test runs real local pilots, whose measures `tune: auto` follows."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlmodel import Session, select

from tests.integration.conftest import LiveTower
from tests.integration.test_control import cli
from tests.integration.test_pages import Reader, browser  # noqa: F401  (a fixture)
from tower.cli import main as tower_main
from tower.loops import matchmaker, tune
from tower.model.db import transaction
from tower.model.models import Attempt, Job, Pilot, Production, TuneDecision, Usage
from tower.retries import retry
from tower.retries.outcomes import Outcome

#: The local site's pilots: 8 GB, ten minutes less a margin of 5 s for each job.
SITE = {"pilot": {"slots": 2, "cores": 2, "memory": 8000, "walltime": "10m",
                  "drain_margin": 5, "idle_timeout": 3},
        "backlog": {"min": 50}}
LONGEST = 595


class HttpPilot:
    """A registered pilot of site `local`, spoken for by the test over the tower's API."""

    def __init__(self, tower: LiveTower, name: str) -> None:
        self.url = f"{tower.runtime.config.api.url}/api/v1/pilots/{name}"
        with transaction(tower.runtime.engine) as session:
            session.add(Pilot(id=name, site="local"))  # as the factory submits it
        self.post("register", {})

    def post(self, action: str, body: dict[str, Any]) -> Any:
        answer = requests.post(f"{self.url}/{action}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def claim(self, count: int) -> list[dict[str, Any]]:
        """Lease up to `count` messages and claim their jobs; the granted claims."""
        messages = self.post("lease", {"queue": "local.default", "max": count})["messages"]
        granted = self.post("claim", {"jobs": [[message["job"], message["attempt"]]
                                               for message in messages]})["jobs"]
        self.post("lease", {"queue": "local.default", "max": 0,
                            "ack": [message["id"] for message in messages]})
        assert all(job["granted"] for job in granted), granted
        return granted  # type: ignore[no-any-return]

    def finish(self, claimed: list[dict[str, Any]], figures: list[dict[str, Any]]) -> None:
        """Report the claimed jobs finished, each with its figures."""
        verdicts = self.post("report", {"reports": [
            {"job": job["job"], "attempt": job["attempt"], "ending": "finished",
             "exit_code": 0, **measured} for job, measured in zip(claimed, figures,
                                                                   strict=True)]})["verdicts"]
        assert all(verdict["accepted"] for verdict in verdicts), verdicts


def _submit(tower: LiveTower, directory: Path, name: str, jobs: int, **settings: Any) -> None:
    request = {"name": name, "software": "sim 1", "command": ["${python}", "-c", "pass"],
               "events_total": 10 * jobs, "events_per_job": 10, "walltime": "9m", **settings}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    tower.submit(path)
    matchmaker.run_once(tower.runtime)


def _figures(memory: list[int], cpu: list[float], wall: list[float]) -> list[dict[str, Any]]:
    return [{"max_rss_mb": m, "cpu_seconds": c, "wall_seconds": w}
            for m, c, w in zip(memory, cpu, wall, strict=True)]


def test_the_usage_of_successful_attempts_is_shown_by_tower_show_and_the_page(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], browser: Any) -> None:  # noqa: F811
    tower = live_tower(SITE)
    _submit(tower, tmp_path, "measured", jobs=10, cores=2)
    pilot = HttpPilot(tower, "p1")
    nothing = cli(tower, capsys, "show", "measured")
    assert nothing["usage"] is None and nothing["tuning"] == []
    # ten jobs of ten events on two cores: 100..190 MB, 1..10 s of CPU, 2..20 s of wall
    pilot.finish(pilot.claim(10), _figures([100 + 10 * n for n in range(10)],
                                           [n + 1.0 for n in range(10)],
                                           [2.0 * (n + 1) for n in range(10)]))

    usage = cli(tower, capsys, "show", "measured")["usage"]
    assert usage["attempts"] == 10
    assert usage["memory_mb"] == {"median": 145.0, "p95": 190.0, "max": 190.0}
    assert usage["cpu_seconds"] == {"median": 5.5, "p95": 10.0, "max": 10.0}
    assert usage["wall_seconds"] == {"median": 11.0, "p95": 20.0, "max": 20.0}
    assert usage["cpu_seconds_per_event"] == {"median": 0.55, "p95": 1.0, "max": 1.0}
    assert usage["wall_seconds_per_event"] == {"median": 1.1, "p95": 2.0, "max": 2.0}
    assert usage["efficiency"] == {"median": 0.25, "p95": 0.25, "max": 0.25}
    assert usage["overall_efficiency"] == 0.25

    capsys.readouterr()
    assert tower_main(["--config", str(tower.home / "tower.yaml"), "show", "measured"]) == 0
    shown = {line.split("  ")[2].strip(): line.split() for line in
             capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert shown["peak memory (MB)"][-3:] == ["145.0", "190.0", "190.0"]
    assert shown["CPU per event (s)"][-3:] == ["0.55", "1.0", "1.0"]
    assert shown["efficiency: CPU / (wall x cores)"][-3:] == ["0.25", "0.25", "0.25"]

    reader = Reader(browser, tower.runtime.config.api.url)
    try:
        reader.open("/productions/measured", "production-usage")
        for figure, expected in usage.items():
            if not isinstance(expected, dict):
                continue
            for name, value in expected.items():
                cell = f'#usage tr[data-figure="{figure}"] [data-key="{name}"]'
                assert float(reader.page.locator(cell).inner_text()) == value, cell
        assert reader.number('[data-key="usage_attempts"]') == 10
    finally:
        reader.page.close()


def test_tune_auto_follows_the_p95_within_the_site_shape_and_records_each_change(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(SITE)
    _submit(tower, tmp_path, "tuned", jobs=12, memory=1000,
            tune={"mode": "auto", "factor": 1.5, "min_sample": 5})
    pilot, doomed = HttpPilot(tower, "p1"), HttpPilot(tower, "p2")

    # a job that runs out of memory before any tuning: the policy grows its own memory
    [grown] = doomed.claim(1)
    with transaction(tower.runtime.engine) as session:
        # as the monitor settles a pilot whose batch job ended OUT_OF_MEMORY
        retry.lose_pilot_work(session, tower.runtime.config, "p2", Outcome.OUT_OF_MEMORY,
                              "the batch system killed the pilot: out of memory")
    with Session(tower.runtime.engine) as session:
        assert session.get(Job, grown["job"]).memory == 1500  # type: ignore[union-attr]

    # four successes are below the minimum sample: nothing changes
    pilot.finish(pilot.claim(4), _figures([2000, 2100, 2200, 2300], [1.0] * 4, [2.0] * 4))
    assert tune.run_once(tower.runtime) == 0
    # a job claimed now runs with what it was given
    [running] = pilot.claim(1)
    assert (running["memory"], running["walltime"]) == (1000, 540)

    # the fifth: memory 2400 MB at p95, x 1.5; two seconds a job of ten events, x 1.5, is
    # less than the least walltime tuning gives
    pilot.finish(pilot.claim(1), _figures([2400], [1.0], [2.0]))
    assert tune.run_once(tower.runtime) == 2
    assert tune.run_once(tower.runtime) == 0  # looked at again only after a while
    shown = cli(tower, capsys, "show", "tuned")
    decisions = {row["setting"]: row for row in shown["tuning"]}
    assert (decisions["memory"]["old"], decisions["memory"]["new"]) == (1000, 3600)
    assert (decisions["memory"]["samples"], decisions["memory"]["p95"]) == (5, 2400)
    assert (decisions["walltime"]["old"], decisions["walltime"]["new"]) == (540, tune.MIN_WALLTIME)
    assert decisions["walltime"]["p95"] == pytest.approx(0.2)
    assert "latest 5 successful attempts x 1.5" in decisions["memory"]["reason"]
    capsys.readouterr()
    assert tower_main(["--config", str(tower.home / "tower.yaml"), "show", "tuned"]) == 0
    text = capsys.readouterr().out
    assert "tuned memory 1000 -> 3600 at " in text and "tuned walltime 540 -> 60 at " in text
    settings = {row["key"]: (row["value"], row["from"]) for row in shown["settings"]}
    assert settings["memory"] == (3600, "tuned (tune: auto)")
    assert settings["walltime"] == (tune.MIN_WALLTIME, "tuned (tune: auto)")

    # every later job asks what was learnt, the one grown by its retry too (3600 > 1500);
    # the running job keeps what it was given
    matchmaker.run_once(tower.runtime)
    later = pilot.claim(20)
    assert len(later) == 6 and grown["job"] in {job["job"] for job in later}
    assert {(job["memory"], job["walltime"]) for job in later} == {(3600, tune.MIN_WALLTIME)}
    with Session(tower.runtime.engine) as session:
        kept = session.get(Job, running["job"])
        assert kept is not None and (kept.memory, kept.walltime, kept.state) == (
            None, None, "running")


def test_tune_auto_never_asks_more_than_the_sites_pilots_have(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(SITE)
    _submit(tower, tmp_path, "capped", jobs=6, memory=1000, walltime="5m",
            tune={"min_sample": 5})
    pilot = HttpPilot(tower, "p1")
    # 6000 MB x 1.5 is more than the 8000 MB pilot; 40 s an event x 10 x 1.5 is more
    # than the 595 s a pilot gives a job
    pilot.finish(pilot.claim(5), _figures([6000] * 5, [400.0] * 5, [400.0] * 5))
    assert tune.run_once(tower.runtime) == 2
    with Session(tower.runtime.engine) as session:
        rows = session.exec(select(TuneDecision)).all()
        production = session.exec(select(Production)).one()
    decisions = {row.setting: row for row in rows}
    assert (decisions["memory"].new, decisions["memory"].bound) == (8000, 8000)
    assert (decisions["walltime"].new, decisions["walltime"].bound) == (LONGEST, LONGEST)
    assert "= 9000, bounded by a pilot's 8000" in decisions["memory"].reason
    assert (production.spec["memory"], production.spec["walltime"]) == (8000, LONGEST)
    [later] = pilot.claim(1)
    assert (later["memory"], later["walltime"]) == (8000, LONGEST)
    # a production with no tune keeps its request, whatever its attempts used
    _submit(tower, tmp_path, "fixed", jobs=6, memory=1000)
    claimed = pilot.claim(5)
    assert {job["production"] for job in claimed} == {"fixed"}
    pilot.finish(claimed, _figures([6000] * 5, [1.0] * 5, [2.0] * 5))
    assert tune.run_once(tower.runtime) == 0
    assert cli(tower, capsys, "show", "fixed")["tuning"] == []


def test_tune_auto_with_real_pilots_learns_from_what_they_measured(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower()
    path = tmp_path / "learnt.yaml"
    path.write_text(yaml.safe_dump({
        "name": "learnt", "software": "sim 1", "events_total": 200, "events_per_job": 10,
        "command": ["${python}", "-c", "import time; block = bytearray(64 * 2**20); "
                    "time.sleep(0.05 * ${events})"],
        "walltime": "5m", "memory": 1000, "tune": {"min_sample": 5}}))
    tower.submit(path)
    tower.drive(tower.all_ended, timeout=180)
    with Session(tower.runtime.engine) as session:
        decisions = {row.setting: row for row in session.exec(select(TuneDecision)).all()}
        used = session.exec(select(Usage)).all()
        starts = session.exec(select(Attempt.started_at)).all()
    assert len(used) == 20 and all(row.max_rss_mb and row.max_rss_mb >= 64 for row in used)
    memory = decisions["memory"]
    # the pilots' measure of the first successes, x 1.5
    assert memory.old == 1000 and 5 <= memory.samples < 20
    assert memory.p95 >= 64 and memory.new == math.ceil(memory.p95 * 1.5)
    assert (decisions["walltime"].old, decisions["walltime"].new) == (300, tune.MIN_WALLTIME)
    # jobs claimed after the change ran with it
    assert any(start > memory.at for start in starts)
