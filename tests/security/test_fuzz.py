"""The API fuzzed from its own OpenAPI document (schemathesis): valid and invalid requests to
every operation, as a reader, a manager and a pilot over real TLS, against a live tower on
SQLite and PostgreSQL. No answer may be a 5xx or break the document's response schemas.

GRIDTOWER_FUZZ_EXAMPLES sets the examples per operation and caller (`make test`: a few;
`make fuzz`: hundreds). Each request has a timeout, so a request the tower never answers
fails the run instead of hanging it."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import tls_api, write_home
from tests.integration.test_failures import flaky_production
from tower.auth import ca
from tower.config import load_config
from tower.management import productions
from tower.model.db import transaction
from tower.model.models import Pilot
from tower.runtime import Runtime
from web.server import start_server

EXAMPLES = int(os.environ.get("GRIDTOWER_FUZZ_EXAMPLES", "8"))
#: Seconds the tower has to answer one request.
REQUEST_TIMEOUT = 15
PILOT_ID = "p0000000000000000000000000000001"
CALLERS = ("reader", "manager", "pilot")


@dataclass
class Tower:
    url: str
    ca_cert: str
    certs: dict[str, Any]


@pytest.fixture
def tower(tmp_path: Path, database_url: str) -> Iterator[Tower]:
    """A tower serving TLS, with a production of two jobs and a registered pilot."""
    home = tmp_path / "home"
    authority = ca.init_ca(home / "ca", "test CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
    certs: dict[str, Any] = {
        name: tuple(map(str, ca.issue(authority, kind, name, days=1)))
        for name, kind in (("manager", "user"), ("reader", "robot"))}
    credential = home / "pilot.pem"
    credential.write_bytes(ca.issue_pilot_credential(authority, "local", PILOT_ID, 3600))
    credential.chmod(0o600)
    certs["pilot"] = str(credential)
    config = load_config(write_home(
        home, database_url,
        api=tls_api(),
        access={"roles": [{"dn": "CN=manager,OU=users,O=gridtower", "role": "manager"},
                          {"pattern": "CN=*,OU=robots,O=gridtower", "role": "reader"}]}))
    server, url = start_server(config)
    runtime = Runtime.open(config)
    server.bind(runtime)
    with transaction(runtime.engine) as session:
        session.add(Pilot(id=PILOT_ID, site="local", batch_id=None))
        for item in productions.plan(session, flaky_production(tmp_path, jobs=2),
                                     runtime.config):
            productions.create(session, item)
    try:
        yield Tower(url, str(authority / "ca.crt"), certs)
    finally:
        server.shutdown()
        runtime.close()


def fuzz(tower: Tower, who: str, statuses: Counter[int]) -> list[str]:
    """Every operation of the served document, EXAMPLES valid and invalid requests each, as
    `who`; the problems found, one per operation at most. `statuses` counts the answers."""
    session = requests.Session()
    session.cert, session.verify = tower.certs[who], tower.ca_cert
    session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the tower's CA
    document = session.get(tower.url + "/api/v1/openapi.json", timeout=REQUEST_TIMEOUT)
    # the pilot may not read the document: it fuzzes what a reader sees
    if document.status_code == 403:
        document = requests.get(tower.url + "/api/v1/openapi.json", cert=tower.certs["reader"],
                                verify=tower.ca_cert, timeout=REQUEST_TIMEOUT)
    raw = document.json()
    schema = schemathesis.openapi.from_dict(raw)
    problems = []
    for result in schema.get_all_operations():
        operation = result.ok()  # an operation the document cannot describe fails here
        # /healthz and /readyz are at the server's root (a `servers` of their own)
        base = raw["paths"][operation.path].get("servers", [{"url": "/api/v1"}])[0]["url"]
        try:
            _fuzz_operation(operation, session, tower.url + base.rstrip("/"), who, statuses)
        except Exception as exc:  # every operation is tried, and all problems are reported
            problems.append(f"{who} {operation.label}: {type(exc).__name__}: {exc}")
    return problems


def _fuzz_operation(operation: Any, session: requests.Session, base_url: str, who: str,
                    statuses: Counter[int]) -> None:
    strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                | operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        if who == "pilot" and "pilot_id" in (case.path_parameters or {}):
            case.path_parameters["pilot_id"] = PILOT_ID  # its own calls reach the code
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT,
                             verify=session.verify, cert=session.cert)
        statuses[response.status_code] += 1
        # /readyz says 503 when a check fails (here: no loop runs), as its document says
        said = response.status_code == 503 and "503" in operation.definition.raw["responses"]
        case.validate_response(response, checks=[response_schema_conformance] + (
            [] if said else [not_a_server_error]))

    run()


@pytest.mark.parametrize("who", CALLERS)
def test_no_request_of_any_caller_gets_a_server_error(tower: Tower, who: str) -> None:
    started, statuses = time.monotonic(), Counter[int]()
    problems = fuzz(tower, who, statuses)
    print(f"{who}: {EXAMPLES} examples an operation in {time.monotonic() - started:.0f}s, "
          f"answers {dict(sorted(statuses.items()))}")
    assert not problems, "\n\n".join(problems)


def test_every_ref_of_the_served_document_resolves(tower: Tower) -> None:
    document = requests.get(tower.url + "/api/v1/openapi.json", cert=tower.certs["reader"],
                            verify=tower.ca_cert, timeout=REQUEST_TIMEOUT).json()
    refs = list(_refs(document))
    assert any("Report" in ref for ref in refs)  # the pilot's reports are described
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} resolves nowhere"
            target = target[part]


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for entry in value.values():
            yield from _refs(entry)
    elif isinstance(value, list):
        for entry in value:
            yield from _refs(entry)
