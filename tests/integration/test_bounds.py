"""Hostile input through the API of a live tower, on SQLite and PostgreSQL: each is refused
with a 4xx naming the field (never a 500), and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.conftest import LiveTower
from tests.integration.test_failures import flaky_production

BIG = 10**30
TOO_BIG = 2**63
#: Nine levels of ten aliases: a billion values from a few hundred bytes.
BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]", *(
    f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 9))])

#: (name, method, path, query, body, status, field): field None when the answer names none.
HOSTILE: list[tuple[str, str, str, dict[str, Any] | None, Any, int, str | None]] = [
    # paging parameters: digits of other scripts, and past 64 bits
    ("arabic digits in after", "GET", "/jobs", {"after": "١٢"}, None, 400, "after"),
    ("superscript digit in limit", "GET", "/jobs", {"limit": "²"}, None, 400, "limit"),
    ("huge after", "GET", "/jobs", {"after": str(BIG)}, None, 400, "after"),
    ("huge pilots limit", "GET", "/pilots", {"limit": str(BIG)}, None, 400, "limit"),
    ("superscript in decisions limit", "GET", "/sites/local/decisions", {"limit": "³"},
     None, 400, "limit"),
    # ids in paths past 64 bits name nothing
    ("huge job id", "GET", f"/jobs/{BIG}", None, None, 404, None),
    ("huge job id, why", "GET", f"/jobs/{TOO_BIG}/why", None, None, 404, None),
    ("a job id past 32 bits", "GET", f"/jobs/{2**31}", None, None, 404, None),
    ("a page after an id past 32 bits", "GET", "/jobs", {"after": str(2**31)}, None, 400,
     "after"),
    # catalog conditions
    ("huge size condition", "GET", "/catalog/find", {"q": f"size>{BIG}"}, None, 400,
     "condition"),
    ("huge job condition", "GET", "/catalog/find", {"q": f"job={TOO_BIG}"}, None, 400,
     "condition"),
    ("a job condition past 32 bits", "GET", "/catalog/find", {"q": f"job>{2**31}"}, None,
     400, "condition"),
    ("huge metadata number", "GET", "/catalog/find", {"q": f"seed={BIG}"}, None, 200, None),
    # NUL anywhere: PostgreSQL cannot take one
    ("NUL in a path", "GET", "/productions/fl%00aky", None, None, 400, "name"),
    ("NUL in a dataset path", "GET", "/catalog/datasets/a%00/files", None, None, 400,
     "name"),
    ("NUL in a query", "GET", "/jobs", {"production": "a\x00"}, None, 400, "production"),
    ("NUL in a condition", "GET", "/catalog/find", {"q": "dataset=a\x00"}, None, 400, "q"),
    ("NUL in a held query", "GET", "/held", {"production": "a\x00"}, None, 400,
     "production"),
    ("NUL in a body string", "POST", "/jobs/hold", None, {"production": "fl\x00aky"}, 400,
     "production"),
    ("NUL in a pilot host", "POST", "/pilots/p1/register", None, {"host": "a\x00"}, 400,
     "host"),
    # integers past 64 bits in bodies
    ("a job id past 32 bits in a list", "POST", "/jobs/hold", None, {"jobs": [2**31]}, 400,
     "jobs.0"),
    ("a claim of a job past 32 bits", "POST", "/pilots/p1/claim", None,
     {"jobs": [[1, 2**31]]}, 400, "jobs.0.1"),
    ("a report of an exit code past 32 bits", "POST", "/pilots/p1/report", None,
     {"reports": [{"job": 1, "attempt": 1, "ending": "finished", "exit_code": 2**40}]}, 400,
     "reports.0.exit_code"),
    ("huge job in a list", "POST", "/jobs/hold", None, {"jobs": [TOO_BIG]}, 400, "jobs.0"),
    ("huge heartbeat pair", "POST", "/pilots/p1/heartbeat", None, {"jobs": [[TOO_BIG, 1]]},
     400, "jobs.0.0"),
    ("huge retry exit code", "POST", "/productions/flaky/retry", None, {"exit_code": BIG},
     400, "exit_code"),
    ("huge lease ack", "POST", "/pilots/p1/lease", None,
     {"queue": "local.default", "max": 1, "ack": [-BIG]}, 400, "ack.0"),
    # nesting
    ("a body 100,000 deep", "POST", "/jobs/hold", None, "[" * 100_000 + "]" * 100_000, 400,
     None),
    ("a request 100,000 deep", "POST", "/productions", None,
     {"text": "a: " + "[" * 100_000, "dry_run": True}, 400, None),
    ("NaN in a body", "POST", "/productions/flaky/retry", None, '{"exit_code": NaN}', 400,
     None),
    ("a YAML alias bomb", "POST", "/productions", None, {"text": BOMB, "dry_run": True}, 400,
     None),
    # clone, approve, extend: numbers past 64 bits, or that make endless jobs
    ("clone with huge numbers", "POST", "/productions/flaky/clone", None,
     {"name": "big", "set": [f"events_total={BIG}", f"events_per_job={BIG}"]}, 400,
     "events_total"),
    ("clone nested deep", "POST", "/productions/flaky/clone", None,
     {"name": "deep", "set": ["parameters.a=" + "[" * 5000 + "]" * 5000]}, 400, "set"),
    ("approve with a huge number", "POST", "/productions/flaky/approve", None,
     {"set": [f"priority={BIG}"]}, 400, "priority"),
    ("extend past 64 bits", "POST", "/productions/flaky/extend", None, {"events": BIG}, 400,
     "events"),
    ("extend to too many jobs", "POST", "/productions/flaky/extend", None,
     {"events": 10**12}, 400, "events"),
    # sheet name patterns: attributes, indexes, huge widths
    ("pattern reaching an attribute", "POST", "/productions/import", None,
     {"text": "source\nRn222\n", "template": "flaky", "name": "{template.__init__}",
      "dry_run": True}, 400, "name"),
    ("pattern indexing", "POST", "/productions/import", None,
     {"text": "source\nRn222\n", "template": "flaky", "name": "{template[0]}",
      "dry_run": True}, 400, "name"),
    ("pattern of a huge width", "POST", "/productions/import", None,
     {"text": "source\nRn222\n", "template": "flaky", "name": "x{row:>2000000}",
      "dry_run": True}, 400, "name"),
]


def _request(**changes: Any) -> str:
    """A valid production request (a YAML text) with `changes`."""
    request = {"name": "hostile", "software": "s 1", "command": ["true"],
               "events_total": 10, "events_per_job": 1, "walltime": "2m",
               "outputs": ["out_*.txt"], **changes}
    return yaml.safe_dump(request)


#: (name, request text, field) of productions that pass no submit.
HOSTILE_REQUESTS: list[tuple[str, str, str]] = [
    ("an environment name with =", _request(environment={"A=B": "x"}), "environment"),
    ("an environment name with a space", _request(environment={"A B": "x"}), "environment"),
    ("a steering file name with NUL",
     'name: hostile\nsoftware: s\ncommand: ["true"]\nevents_total: 10\n'
     'events_per_job: 1\nwalltime: 2m\nsteering: {"a\\0b": x}\n', "steering"),
    ("NUL in a command", _request(command=["true", "a\x00"]), "command.1"),
    ("a dataset with ..", _request(dataset="a/../b"), "dataset"),
    ("a dataset with //", _request(dataset="a//b"), "dataset"),
    ("a dataset ending in /", _request(dataset="a/b/"), "dataset"),
    ("an output going up", _request(outputs=["../*"]), "outputs"),
    ("an absolute output", _request(outputs=["/etc/*"]), "outputs"),
    ("an empty output", _request(outputs=[""]), "outputs"),
    ("an output with NUL", _request(outputs=["a\x00*"]), "outputs.0"),
    ("events past 64 bits", _request(events_total=BIG, events_per_job=BIG), "events_total"),
    ("a float past 64 bits for an int", _request(priority=1e300), "priority"),
    ("more jobs than a production holds", _request(events_total=10**9), "events_per_job"),
    ("a priority past 32 bits", _request(priority=2**40), "priority"),
    ("events of one job past 32 bits", _request(events_total=2**40, events_per_job=2**40),
     "events_per_job"),
    ("a seed base past 64 bits with its jobs", _request(seed_base=2**63 - 5), "seed_base"),
    ("a post timeout of ages", _request(post_timeout=BIG), "post_timeout"),
    ("a walltime of ages", _request(walltime="99999999999999999999d"), "walltime"),
    ("a walltime of infinite days", _request(walltime="9" * 400 + "d"), "walltime"),
    ("a parent chain of 3000", yaml.safe_dump_all(
        [{"name": "p0", "software": "s", "command": ["true"], "events_total": 1,
          "events_per_job": 1, "walltime": 60, "abstract": True},
         *({"name": f"p{n}", "parent": f"p{n - 1}", "abstract": True} for n in range(1, 3000)),
         {"name": "last", "parent": "p2999"}]), "parent"),
]


@pytest.fixture
def tower(live_tower: Callable[..., LiveTower], tmp_path: Path) -> LiveTower:
    tower = live_tower()
    tower.submit(flaky_production(tmp_path, jobs=2, trial={"events": 1}))
    return tower


def _call(tower: LiveTower, method: str, path: str, query: dict[str, Any] | None,
          body: Any) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body) if body is not None else None
    # a tower that loops without end on a request fails the test instead of hanging it
    return requests.request(method, tower.runtime.config.api.url + "/api/v1" + path,
                            params=query, data=data, timeout=30,
                            headers={"Content-Type": "application/json"})


def _counts(tower: LiveTower) -> dict[str, int]:
    return tower.counts()


@pytest.mark.parametrize(("name", "method", "path", "query", "body", "status", "field"),
                         HOSTILE, ids=[row[0] for row in HOSTILE])
def test_hostile_input_is_a_4xx_naming_the_field(
        tower: LiveTower, name: str, method: str, path: str, query: dict[str, Any] | None,
        body: Any, status: int, field: str | None) -> None:
    before = tower.counts()
    answer = _call(tower, method, path, query, body)
    assert answer.status_code == status, (name, answer.text[:500])
    if status >= 400:
        assert answer.json()["field"] == field, (name, answer.json())
    assert tower.counts() == before


@pytest.mark.parametrize(("name", "text", "field"), HOSTILE_REQUESTS,
                         ids=[row[0] for row in HOSTILE_REQUESTS])
def test_a_request_that_can_never_run_is_refused_at_submit(
        tower: LiveTower, name: str, text: str, field: str) -> None:
    before = tower.counts()
    answer = _call(tower, "POST", "/productions", None, {"text": text})
    assert answer.status_code == 400, (name, answer.text[:500])
    assert answer.json()["field"] == field, (name, answer.json())
    assert tower.counts() == before


def test_paging_a_page_with_a_digit_int_cannot_read_is_a_400(tower: LiveTower) -> None:
    answer = requests.get(tower.runtime.config.api.url + "/jobs", params={"limit": "²"},
                          timeout=30)
    assert answer.status_code == 400 and "limit" in answer.text
