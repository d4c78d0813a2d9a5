"""`/metrics` parses as Prometheus text, and its numbers are the API's."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import LiveTower
from tests.integration.test_failures import RETRY, attempts_by_job, flaky_production


def scrape(tower: LiveTower) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = requests.get(f"{tower.runtime.config.api_url}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(
        "text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def test_metrics_parse_and_match_the_api(live_tower: Callable[..., LiveTower],
                                         tmp_path: Path) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=6, fail_share=0.4))
    api = tower.runtime.config.api_url + "/api/v1"
    [submitted] = requests.get(f"{api}/productions", timeout=10).json()["productions"]
    running = scrape(tower)
    assert {dict(labels)["state"]: value for labels, value in
            running["gridtower_jobs"].items()} == submitted["states"]
    assert running["gridtower_productions"] == {(("phase", "active"),): 1}
    tower.drive(tower.all_ended, timeout=90)
    sites = requests.get(f"{api}/sites", timeout=10).json()["sites"]
    metrics = scrape(tower)

    # a finished production drops out of the labelled families: their labels stay bounded
    assert "gridtower_jobs" not in metrics and "gridtower_events_done" not in metrics
    assert metrics["gridtower_productions"] == {(("phase", "finished"),): 1}
    # the loops ran in this process
    assert metrics["gridtower_loop_cycles_total"][(("loop", "matchmaker"),)] > 0
    assert metrics["gridtower_loop_errors_total"][(("loop", "matchmaker"),)] == 0
    assert any(labels == (("blueprint", "pilot"), ("le", "+Inf"), ("status", "2xx"))
               and count > 0 for labels, count in
               metrics["gridtower_api_request_seconds_bucket"].items())
    outcomes = Counter(a.outcome for rows in attempts_by_job(tower).values() for a in rows)
    assert outcomes["exit_code"] >= 1  # some attempts failed: more than one class
    assert {dict(labels)["outcome"]: value for labels, value in
            metrics["gridtower_attempts_total"].items()} == dict(outcomes)
    assert metrics["gridtower_outputs_staged_total"][()] == 6
    assert metrics["gridtower_outputs_waiting"][()] == 0
    assert metrics["gridtower_outputs_staged_bytes_total"][()] > 0
    for row in sites:
        for state, count in row["pilots"].items():
            labels = (("queue", row["queue"]), ("site", row["site"]), ("state", state))
            assert metrics["gridtower_pilots"][labels] == count
        key = (("queue", row["queue"]), ("site", row["site"]))
        assert metrics["gridtower_backlog"][key] == row["backlog"]
        assert metrics["gridtower_backlog_bound"][key] == row["bound"]


DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "gridtower.json"


def test_every_metric_the_grafana_dashboard_names_is_served(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    """Each `gridtower_*` name in the dashboard's queries is a family (or a sample of one:
    `_total`, `_bucket`, `_count`) that a live /metrics declares."""
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=2, fail_share=0))
    tower.drive(tower.all_ended, timeout=60)
    answer = requests.get(f"{tower.runtime.config.api_url}/metrics", timeout=10)
    served = set()
    for family in text_string_to_metric_families(answer.text):
        served |= {family.name, *(f"{family.name}{suffix}" for suffix in
                                  ("_total", "_bucket", "_count", "_sum"))}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [item["query"] for item in dashboard["templating"]["list"]
                if item["type"] == "query"]
    named = {name for query in queries for name in re.findall(r"gridtower_\w+", query)}
    assert len(named) >= 15
    assert named - served == set()
    titles = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert titles == {"Productions", "Sites", "Failures", "Staging", "The tower itself"}
