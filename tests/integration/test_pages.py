"""The status pages in a real headless Chromium, against a live tower on PostgreSQL with
local pilots and a production in flight: every page loads without console errors, its
numbers are the API's, its links lead where they say, and each is saved as a screenshot
(test-artifacts/pages/)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.conftest import missing_service, postgres_database, write_home
from tests.integration.conftest import EXAMPLES, LiveTower

# its module fixture is made once: the module runs in one test process
pytestmark = pytest.mark.xdist_group("pages")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "pages"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        missing_service("Debian's chromium (scripts/services.sh installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=shutil.which("chromium")
                                              or CHROMIUM, headless=True)
        yield launched
        launched.close()


class Reader:
    """One browser page that remembers every console error and failed request."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error"
                     and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("requestfailed", lambda request: self.errors.append(
            f"request failed: {request.url}"))

    def open(self, path: str, shot: str) -> Any:
        answer = self.page.goto(self.base + path)
        assert answer is not None and answer.status == 200, (path, answer and answer.status)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        assert self.errors == [], (path, self.errors)
        return self.page

    def number(self, selector: str) -> int:
        return int(self.page.locator(selector).inner_text().replace(",", "").strip())

    def links(self) -> list[tuple[str, str]]:
        """(text, href) of every link on the page that stays on the tower."""
        found = self.page.eval_on_selector_all(
            "a[href]", "links => links.map(a => [a.innerText.trim(), a.href])")
        return [(text, href) for text, href in found
                if urlsplit(href).netloc == urlsplit(self.base).netloc]


def _productions(directory: Path) -> tuple[Path, Path]:
    """`mixed`: six jobs with outputs, the third of which always exits 3; `inflight`: three
    jobs that run for minutes, so they are running while the pages are read."""
    toysim = ["${python}", str(EXAMPLES / "toysim.py"), "--steering", "steering.json",
              "--output-dir", "${output_dir}"]
    mixed = {
        "name": "mixed", "software": "toysim 1.0",
        "command": ["${python}", "-c",
                    "import subprocess, sys; sys.exit(3) if ${index} == 2 else "
                    f"sys.exit(subprocess.call({toysim!r}))"],
        "steering": {"steering.json": '{"seed": ${seed}, "first_event": ${first_event}, '
                                      '"events": ${events}, "output": "decays_${index}.csv"}'},
        "parameters": {"source": "Co57", "component": "cathode"},
        "events_total": 6 * 40, "events_per_job": 40, "walltime": "5m",
        "outputs": ["decays_*.csv"],
    }
    inflight = {"name": "inflight", "software": "sleeper 1", "priority": -1,
                "command": ["${python}", "-c", "import time; time.sleep(600)"],
                "events_total": 3, "events_per_job": 1, "walltime": "4m"}
    paths = []
    for request in (mixed, inflight):
        path = directory / f"{request['name']}.yaml"
        path.write_text(yaml.safe_dump(request))
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTower]:
    """A tower whose `mixed` production has ended (five done, one failed after three
    tries) and whose `inflight` production has its three jobs running."""
    directory = tmp_path_factory.mktemp("pages")
    with postgres_database("pages") as url:
        live = LiveTower(write_home(directory / "home", url,
                                    {"limits": {"max_queued": 2, "max_running": 3,
                                                "max_per_cycle": 3}}))
        try:
            mixed, inflight = _productions(directory)
            live.submit(mixed)
            live.drive(live.all_ended, timeout=180)
            live.submit(inflight)
            live.drive(lambda: live.counts().get("running", 0) == 3, timeout=120)
            yield live
        finally:
            live.close()


def _api(tower: LiveTower, path: str) -> Any:
    answer = requests.get(tower.runtime.config.api.url + "/api/v1" + path, timeout=10)
    answer.raise_for_status()
    return answer.json()


@pytest.fixture
def reader(browser: Any, tower: LiveTower) -> Iterator[Reader]:
    opened = Reader(browser, tower.runtime.config.api.url)
    yield opened
    opened.page.close()


def test_the_overview_shows_the_apis_numbers(reader: Reader, tower: LiveTower) -> None:
    reader.open("/", "overview")
    productions = {row["name"]: row for row in _api(tower, "/productions")["productions"]}
    assert productions["mixed"]["states"] == {"done": 5, "failed": 1}
    assert productions["inflight"]["states"] == {"running": 3}
    active = '#active-productions tr[data-production="inflight"]'
    assert reader.number(f'{active} [data-key="running"]') == 3
    assert reader.number(f'{active} [data-key="jobs"]') == productions["inflight"]["jobs"]
    finished = '#finished-productions tr[data-production="mixed"]'
    assert reader.number(f'{finished} [data-key="done"]') == 5
    assert reader.number(f'{finished} [data-key="failed"]') == 1
    sites = {(row["site"], row["queue"]): row for row in _api(tower, "/sites")["sites"]}
    for (site, queue), row in sites.items():
        selector = f'#sites tr[data-site="{site}"][data-queue="{queue}"]'
        assert reader.number(f'{selector} [data-key="running"]') == row["pilots"]["running"]
        assert reader.number(f'{selector} [data-key="backlog"]') == row["backlog"]
    # the plots are server-rendered SVG: five jobs done, three failed attempts of class
    # exit_code in the last day
    done = reader.page.locator("svg.chart").first.locator("rect.bar")
    assert sum(float(done.nth(i).get_attribute("data-value") or 0)
               for i in range(done.count())) == 5
    failed = reader.page.locator("svg.chart").nth(1).locator('rect.bar[data-series="exit_code"]')
    assert sum(float(failed.nth(i).get_attribute("data-value") or 0)
               for i in range(failed.count())) == 3


def test_the_production_page_shows_states_failures_sites_and_origins(
        reader: Reader, tower: LiveTower) -> None:
    page = reader.open("/productions/mixed", "production")
    summary = _api(tower, "/productions/mixed")
    for state in ("done", "failed", "running", "defined"):
        assert reader.number(f'#states [data-key="{state}"]') == summary["states"].get(state, 0)
    assert reader.number('[data-key="events_done"]') == summary["events_done"] == 200
    report = _api(tower, "/productions/mixed/failures")
    [group] = report["groups"]
    row = f'#failures tr[data-class="exit_code"][data-code="{group["exit_code"]}"]'
    assert reader.number(f'{row} [data-key="attempts"]') == group["attempts"] == 3
    assert reader.number('#per-site tr[data-site="local"] [data-key="done"]') == 5
    assert reader.number('#per-site tr[data-site="local"] [data-key="failed_attempts"]') == 3
    origin = page.locator('#parameters tr[data-parameter="parameters.source"] td').nth(2)
    assert origin.inner_text() == "mixed"
    assert page.locator('#parameters tr[data-parameter="retry"] td').nth(2).inner_text() \
        == "default"
    page.locator("#dataset-link").click()
    assert page.locator("h1").inner_text() == "Dataset mixed"
    assert page.locator("#files tbody tr[data-lfn]").count() == 5
    assert reader.errors == []


def test_production_actions_work_from_the_page(reader: Reader, tower: LiveTower) -> None:
    page = reader.open("/productions/inflight", "production-actions")
    page.locator('#actions button[value="pause"]').click()
    assert "production is paused" in page.locator("p.note").inner_text()
    assert _api(tower, "/productions/inflight")["state"] == "paused"
    page.locator('#actions button[value="resume"]').click()
    assert "production is active" in page.locator("p.note").inner_text()
    assert _api(tower, "/productions/inflight")["state"] == "active"
    assert reader.errors == []


def test_the_site_page_shows_pilots_backlog_and_failures(reader: Reader,
                                                         tower: LiveTower) -> None:
    def local() -> Any:
        [row] = [row for row in _api(tower, "/sites")["sites"] if row["site"] == "local"]
        return row

    # the pilots live on (an idle one drains): compare with the API when it said the same
    # just before and just after the page was read
    for _ in range(10):
        before = local()
        page = reader.open("/sites/local", "site")
        row = local()
        if row == before:
            break
    queue = f'#queues tr[data-queue="{row["queue"]}"]'
    for state in ("submitted", "running", "draining", "done", "lost"):
        assert reader.number(f'{queue} [data-key="{state}"]') == row["pilots"][state]
    assert reader.number(f'{queue} [data-key="backlog"]') == row["backlog"]
    assert page.locator("#recent-failures tbody tr").count() == 3
    assert page.locator("#recent-failures tbody tr").first.inner_text().count("exit_code") == 1
    assert page.locator('[data-key="health"]').inner_text() == "ok"


def test_the_jobs_table_filters_and_pages(reader: Reader, tower: LiveTower) -> None:
    page = reader.open("/jobs?production=mixed&state=done&limit=2", "jobs")
    expected = [job["id"] for job in _api(tower, "/jobs?production=mixed&state=done")["jobs"]]
    assert len(expected) == 5 and reader.number('[data-key="total"]') == 5
    seen = []
    while True:
        seen += [int(row.get_attribute("data-job") or 0)
                 for row in page.locator("#jobs tbody tr[data-job]").all()]
        if page.locator("#next-page").count() == 0:
            break
        page.locator("#next-page").click()
        assert reader.errors == []
    assert seen == expected
    page.select_option('select[name="state"]', "failed")
    page.locator('form.filters button[type="submit"]').click()
    [failed] = [int(row.get_attribute("data-job") or 0)
                for row in page.locator("#jobs tbody tr[data-job]").all()]
    assert failed == _api(tower, "/jobs?production=mixed&state=failed")["jobs"][0]["id"]


def test_the_job_page_shows_every_attempt_its_log_and_replicas(reader: Reader,
                                                              tower: LiveTower) -> None:
    [failed] = _api(tower, "/jobs?production=mixed&state=failed")["jobs"]
    page = reader.open(f"/jobs/{failed['id']}", "job-failed")
    shown = _api(tower, f"/jobs/{failed['id']}")
    assert page.locator("[data-attempt]").count() == len(shown["attempts"]) == 3
    assert [o.inner_text() for o in page.locator('[data-key="outcome"]').all()] == \
        ["exit_code"] * 3
    done = _api(tower, "/jobs?production=mixed&state=done")["jobs"][0]
    page = reader.open(f"/jobs/{done['id']}", "job-done")
    [entry] = _api(tower, f"/catalog/find?q=job%3D{done['id']}")["files"]
    row = page.locator(f'#files tr[data-lfn="{entry["lfn"]}"]')
    assert row.count() == 1
    assert [replica["destination"] for replica in entry["replicas"]] == ["store"]
    assert "store" in row.inner_text() and "good" in row.inner_text()
    assert "finished" in page.locator("[data-attempt]").first.inner_text()


def test_the_pilots_and_catalog_pages(reader: Reader, tower: LiveTower) -> None:
    page = reader.open("/pilots", "pilots")
    pilots = _api(tower, "/pilots?limit=100")["pilots"]
    assert page.locator("#pilots tbody tr[data-pilot]").count() == len(pilots)
    page = reader.open("/catalog", "catalog")
    datasets = {row["name"]: row for row in _api(tower, "/catalog/datasets")["datasets"]}
    assert set(datasets) == {"mixed", "inflight"}
    for name, row in datasets.items():
        assert reader.number(f'#datasets tr[data-dataset="{name}"] [data-key="files"]') \
            == row["files"]
    assert datasets["mixed"]["files"] == 5
    page = reader.open("/catalog/find?q=source%3DCo57&q=index%3D1", "find")
    found = _api(tower, "/catalog/find?q=source%3DCo57&q=index%3D1")["files"]
    assert reader.number('[data-key="found"]') == len(found) == 1
    assert page.locator("#files tbody tr[data-lfn]").count() == 1
    page = reader.open("/catalog/find?q=index%3C2", "find-error")
    assert "index is matched with =" in page.locator('[role="alert"]').inner_text()


def test_a_files_page_shows_how_it_was_made_and_offers_the_rerun(reader: Reader,
                                                                  tower: LiveTower) -> None:
    entry = _api(tower, "/catalog/find?q=dataset%3Dmixed")["files"][0]
    shown = _api(tower, f"/catalog/files{entry['lfn']}/provenance")
    record = shown["provenance"]
    page = reader.open(f"/catalog/files{entry['lfn']}", "file")
    assert page.locator("#rerun").inner_text() == shown["rerun"] == \
        f"tower rerun --here {entry['lfn']}"
    assert page.locator('[data-key="software"]').inner_text() == \
        f"{record['software']['name']} {record['software']['version']}"
    assert "none: bare" in page.locator('[data-key="container"]').inner_text()
    [(name, steering)] = record["steering"].items()
    assert steering["sha256"] in page.locator(f'[data-steering="{name}"]').inner_text()
    assert (record["stream"], record["seed"]) == (entry["meta"]["index"], entry["meta"]["seed"])
    missing = requests.get(tower.runtime.config.api.url + "/api/v1/catalog/files/mixed/nothing"
                           "/provenance", timeout=10)
    assert (missing.status_code, missing.json()["field"]) == (404, "lfn")


def test_every_link_leads_where_it_says(reader: Reader, tower: LiveTower) -> None:
    """From each page, every link on the tower answers; a link named after a production,
    site or job opens that object's page."""
    named = {r"/productions/([^/?]+)$": "Production {}", r"/sites/([^/?]+)$": "Site {}",
             r"/jobs/(\d+)$": "Job {}"}
    start = ["/", "/productions/mixed", "/sites/local", "/jobs?production=mixed", "/pilots",
             "/catalog", "/catalog/datasets/mixed"]
    checked: set[str] = set()
    for path in start:
        reader.open(path, "links-" + re.sub(r"\W+", "-", path).strip("-") or "overview")
        for text, href in reader.links():
            if href in checked:
                continue
            checked.add(href)
            answer = reader.page.request.get(href)
            assert answer.status == 200, (path, text, href, answer.status)
            for pattern, heading in named.items():
                match = re.search(pattern, urlsplit(href).path)
                if match and text == match.group(1):
                    title = re.search(r"<h1>(.*?)</h1>", answer.text(), re.DOTALL)
                    assert title and heading.format(text) in title.group(1), (href, title)
    assert len(checked) > 20


def test_a_request_is_shown_and_approved_from_its_page(reader: Reader,
                                                       tower: LiveTower) -> None:
    request = {"name": "asked", "software": "sleeper 1", "events_total": 1,
               "events_per_job": 1, "walltime": "1m", "command": ["${python}", "-c", "0"]}
    filed = requests.post(tower.runtime.config.api.url + "/api/v1/requests", timeout=10,
                          json={"text": yaml.safe_dump(request), "source": "asked.yaml"})
    assert filed.status_code == 200, filed.text
    page = reader.open("/productions/asked", "production-request")
    assert "Requested by" in page.locator("#decisions").inner_text()
    assert page.locator("#states [data-key='jobs']").inner_text() == "0"
    page.locator('#actions button[value="approve"]').click()
    assert "approved: production is active, 1 jobs made" in page.locator("p.note").inner_text()
    assert _api(tower, "/productions/asked")["states"] == {"defined": 1}
    assert page.locator('#actions button[value="approve"]').count() == 0
    assert reader.errors == []
