"""Who may call what, over real TLS with real certificates: every endpoint of the OpenAPI
document against every kind of caller, and nothing changes when a call is refused."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text
from sqlmodel import Session

from tests.conftest import tls_api, write_home
from tests.integration.test_failures import flaky_production
from tower.auth import ca
from tower.config import load_config
from tower.model.db import transaction
from tower.model.models import Pilot
from tower.runtime import Runtime
from web.server import start_server

pytestmark = pytest.mark.one_database

#: What each caller may do: the permissions its calls pass.
MAY = {
    "admin": {"read", "manage", "pilot", "request", "public"},
    "manager": {"read", "manage", "request", "public"},
    "siteadmin": {"read", "request", "public"},
    "reader": {"read", "request", "public"},
    "pilot": {"pilot", "public"},
    "other_site_pilot": {"public"},
    "unknown_user": {"public"},
    "anonymous": {"public"},
}
#: Callers the TLS handshake itself refuses.
REFUSED_AT_HANDSHAKE = ("expired", "revoked", "foreign")
PILOT_ID = "p0000000000000000000000000000001"


@dataclass
class Tower:
    url: str
    ca_cert: str
    certs: dict[str, Any]
    runtime: Runtime
    spec_file: Path

    def call(self, who: str, method: str, path: str, body: Any = None,
             base: str = "/api/v1") -> requests.Response:
        return requests.request(method, self.url + base + path, json=body,
                                cert=self.certs.get(who), verify=self.ca_cert, timeout=10)

    def digest(self) -> str:
        """Everything the database holds, as one hash (but the serving API's own clock,
        tower.loops.presence, which it refreshes every second whoever calls)."""
        hasher = hashlib.sha256()
        with Session(self.runtime.engine) as session:
            tables = [row[0] for row in session.execute(text(
                "SELECT name FROM sqlite_master WHERE type='table' AND name != 'presence' "
                "ORDER BY name"))]
            for table in tables:
                for row in session.execute(text(f'SELECT * FROM "{table}" ORDER BY 1')):
                    hasher.update(repr(tuple(row)).encode())
        return hasher.hexdigest()


@pytest.fixture
def tower(tmp_path: Path) -> Iterator[Tower]:
    home = tmp_path / "home"
    authority = ca.init_ca(home / "ca", "test CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
    people = {name: ca.issue(authority, "robot" if name == "reader" else "user", name, days=1)
              for name in ("admin", "manager", "siteadmin", "reader", "unknown_user",
                           "expired", "revoked")}
    certs: dict[str, Any] = {name: (str(c), str(k)) for name, (c, k) in people.items()}
    ca.revoke(authority, people["revoked"][0])
    for name, site, pilot_id in (("pilot", "local", PILOT_ID),
                                 ("other_site_pilot", "other", "p2")):
        path = home / f"{name}.pem"
        path.write_bytes(ca.issue_pilot_credential(authority, site, pilot_id, 3600))
        path.chmod(0o600)
        certs[name] = str(path)
    expired = home / "expired.pem"
    expired.write_bytes(ca.issue_pilot_credential(authority, "local", "old", 1))
    expired.chmod(0o600)
    certs["expired"] = str(expired)
    foreign = ca.init_ca(tmp_path / "foreign", "another CA").directory
    certs["foreign"] = tuple(map(str, ca.issue(foreign, "user", "admin", days=1)))
    config = load_config(write_home(
        home, f"sqlite:///{home / 'tower.db'}", more_sites={"other": {}},
        api=tls_api(),
        access={"roles": [
            {"dn": "CN=admin,OU=users,O=gridtower", "role": "admin"},
            {"dn": "CN=manager,OU=users,O=gridtower", "role": "manager"},
            {"dn": "CN=siteadmin,OU=users,O=gridtower", "role": "siteadmin",
             "site": "local"},
            {"pattern": "CN=*,OU=robots,O=gridtower", "role": "reader"}]}))
    server, url = start_server(config)
    runtime = Runtime.open(config)
    server.bind(runtime)
    with transaction(runtime.engine) as session:
        session.add(Pilot(id=PILOT_ID, site="local", batch_id=None))
    time.sleep(1.5)  # the expired credential's second is over
    try:
        yield Tower(url, str(authority / "ca.crt"), certs, runtime,
                    flaky_production(tmp_path, jobs=2))
    finally:
        server.shutdown()
        runtime.close()


def requests_for(tower: Tower) -> list[tuple[str, str, str, Any, str]]:
    """(permission, method, path, body, base) for every operation of the OpenAPI document,
    with path parameters filled in, a body of the right shape, and the path's server (the
    API's prefix, or the root for /healthz and /readyz)."""
    document = tower.call("admin", "GET", "/openapi.json").json()
    bodies = {"/pilots/{pilot_id}/claim": {"jobs": []},
              "/pilots/{pilot_id}/heartbeat": {"jobs": []},
              "/pilots/{pilot_id}/report": {"reports": []},
              "/pilots/{pilot_id}/lease": {"queue": "local.default", "max": 0},
              "/pilots/{pilot_id}/release": {"ids": []},
              "/productions": {"text": tower.spec_file.read_text(), "dry_run": True},
              "/productions/import": {"text": "source\nRn222\n", "template": "flaky",
                                      "dry_run": True},
              "/productions/{name}/retry": {}, "/jobs/hold": {"jobs": [1]},
              "/jobs/release": {"jobs": [1]}}
    values = {"pilot_id": PILOT_ID, "name": "flaky", "job_id": "1", "attempt": "1",
              "plot": "wall_time"}
    calls = []
    for path, operations in document["paths"].items():
        concrete = path
        for name, value in values.items():
            concrete = concrete.replace("{" + name + "}", value)
        base = operations.get("servers", [{"url": "/api/v1"}])[0]["url"].rstrip("/")
        for method, operation in operations.items():
            if method == "servers":
                continue
            body = bodies.get(path, {}) if method == "post" else None
            calls.append((operation["x-permission"], method.upper(), concrete, body, base))
    return calls


def test_every_endpoint_answers_each_caller_as_its_role_allows(tower: Tower) -> None:
    calls = requests_for(tower)
    assert len(calls) >= 31 and all(permission for permission, *_ in calls)
    for who, may in MAY.items():
        for permission, method, path, body, base in calls:
            before = tower.digest()
            answer = tower.call(who, method, path, body, base)
            if permission in may:
                assert answer.status_code not in (401, 403), (who, method, path, answer.text)
                continue
            expected = 401 if who == "anonymous" else 403
            assert answer.status_code == expected, (who, method, path, answer.text)
            assert answer.json()["message"], (who, path)
            assert tower.digest() == before, f"{who} {method} {path} changed the database"


def test_bad_certificates_are_refused_at_the_handshake_for_every_endpoint(
        tower: Tower) -> None:
    calls = requests_for(tower)
    before = tower.digest()
    for who in REFUSED_AT_HANDSHAKE:
        for _, method, path, body, base in calls:
            with pytest.raises(requests.exceptions.SSLError):
                tower.call(who, method, path, body, base)
    assert tower.digest() == before


def test_a_forged_identity_header_from_an_untrusted_address_is_ignored(tower: Tower) -> None:
    answer = requests.post(tower.url + "/api/v1/jobs/release", json={"jobs": [1]},
                           headers={"X-Client-DN": "CN=admin,OU=users,O=gridtower"},
                           verify=tower.ca_cert, timeout=10)
    assert answer.status_code == 401


def test_the_openapi_document_lists_every_route_and_only_real_ones(tower: Tower) -> None:
    from web.openapi import PREFIX, ROOT_PATHS

    document = tower.call("reader", "GET", "/openapi.json").json()
    documented = {(method.upper(), path) for path, operations in document["paths"].items()
                  for method in operations if method != "servers"}
    from web.app import create_app

    flask_app = create_app(tower.runtime)  # the app the server runs
    routes = set()
    for rule in flask_app.url_map.iter_rules():
        if rule.rule in ROOT_PATHS:
            assert document["paths"][rule.rule]["servers"] == [{"url": "/"}]
            routes |= {(method, rule.rule) for method in rule.methods or ()
                       if method not in ("HEAD", "OPTIONS")}
        elif rule.rule.startswith(PREFIX + "/"):
            path = rule.rule[len(PREFIX):]
            for part in ("<int:", "<path:", "<"):
                path = path.replace(part, "{")
            path = path.replace(">", "}")
            routes |= {(method, path) for method in rule.methods or ()
                       if method not in ("HEAD", "OPTIONS")}
    assert documented == routes
    ids = [operation["operationId"] for operations in document["paths"].values()
           for method, operation in operations.items() if method != "servers"]
    assert len(ids) == len(set(ids))
    body = json.dumps(document)
    assert '"requestBody"' in body and "Submission" in body


def test_a_pilot_credential_of_another_site_cannot_claim_this_sites_job(tower: Tower) -> None:
    from tower.loops import matchmaker
    from tower.management import productions

    with transaction(tower.runtime.engine) as session:
        session.add(Pilot(id="p2", site="other", batch_id=None, state="running"))
        for item in productions.plan(session, tower.spec_file, tower.runtime.config):
            productions.create(session, item)
    matchmaker.run_once(tower.runtime)
    with Session(tower.runtime.engine) as session:
        jobs = session.execute(text("SELECT id, attempt, site FROM job")).all()
    here = [(job_id, attempt) for job_id, attempt, site in jobs if site == "local"]
    assert here, jobs
    before = tower.digest()
    answer = tower.call("other_site_pilot", "POST", "/pilots/p2/claim",
                        {"jobs": [list(key) for key in here]})
    assert answer.status_code == 200
    assert all(not item["granted"] and "assigned to site local" in item["reason"]
               for item in answer.json()["jobs"])
    assert tower.digest() == before
    # nor may it speak for this site's pilot
    assert tower.call("other_site_pilot", "POST", f"/pilots/{PILOT_ID}/claim",
                      {"jobs": [list(key) for key in here]}).status_code == 403


def test_pilots_run_a_production_over_https_with_the_credentials_the_factory_mints(
        live_tower: Any, tmp_path: Path) -> None:
    from tests.integration.conftest import assert_done_exactly_once

    home = tmp_path / "home"
    authority = ca.init_ca(home / "ca", "test CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
    tower = live_tower(api=tls_api(pilot_ca=True))
    assert tower.runtime.config.api_url.startswith("https://")
    tower.submit(flaky_production(tmp_path, jobs=4))
    seen: dict[str, int] = {}

    def done_while_watching_credentials() -> bool:
        for path in (home / "scratch" / "credentials").glob("*.pem"):
            seen[path.name] = path.stat().st_mode & 0o777
        return tower.all_ended()

    tower.drive(done_while_watching_credentials, timeout=90)
    assert_done_exactly_once(tower.runtime.engine, jobs=4)
    # each pilot's own credential, readable by its owner alone, gone once it ended
    pilots = {name for name in seen if name != "tower-ca.pem"}
    assert pilots and all(seen[name] == 0o600 for name in pilots)
    left = home / "scratch" / "credentials"
    tower.drive(lambda: {path.name for path in left.glob("*.pem")} <= {"tower-ca.pem"},
                timeout=60)


def test_the_cli_submits_and_follows_a_production_on_a_remote_tower_over_https(
        live_tower: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    import yaml

    from tower.cli import main as tower_main
    from tower.loops import daemon

    home = tmp_path / "home"
    authority = ca.init_ca(home / "ca", "test CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
    ca.issue(authority, "user", "manager", days=1, out=tmp_path / "me")  # in client.yaml
    reader = ca.issue(authority, "robot", "monitor", days=1, out=tmp_path / "me")
    tower = live_tower(
        api=tls_api(crl=False, pilot_ca=True),
        access={"roles": [{"dn": "CN=manager,OU=users,O=gridtower", "role": "manager"},
                          {"pattern": "CN=*,OU=robots,O=gridtower", "role": "reader"}]})
    client = tmp_path / "me" / "client.yaml"
    client.write_text(yaml.safe_dump({"url": tower.runtime.config.api_url,
                                      "cert": "manager.crt", "key": "manager.key",
                                      "ca": str(authority / "ca.crt")}))
    # nothing of the tower's own configuration is at hand: no --config, no database
    remote = ["--config", str(tmp_path / "nowhere.yaml"), "--client-config", str(client)]

    def cli(*argv: str, expect: int = 0) -> Any:
        capsys.readouterr()
        code = tower_main([*remote, *argv, "--json"])
        out = capsys.readouterr().out
        assert code == expect, out
        return json.loads(out)

    stop = threading.Event()
    loops = daemon.run_forever(tower.runtime, stop)
    try:
        created = cli("submit", str(flaky_production(tmp_path, jobs=3)))
        assert created["productions"][0]["jobs"] == 3
        deadline = time.monotonic() + 90
        while cli("status", "flaky")["productions"][0]["states"] != {"done": 3}:
            assert time.monotonic() < deadline, "the production did not end"
            time.sleep(0.5)
        page = cli("jobs", "--production", "flaky", "--limit", "2")
        assert [row["state"] for row in page["jobs"]] == ["done", "done"]
        assert page["next_after"] == page["jobs"][-1]["id"]
        assert cli("job", "1")["attempts"][0]["outcome"] == "success"
        assert cli("why", "1")["state"] == "done"
        assert cli("failures", "flaky")["failed_attempts"] == 0
        # a reader may look, not submit; the refusal names why and creates nothing
        as_reader = ["--cert", str(reader[0]), "--key", str(reader[1])]
        assert cli(*as_reader, "status")["productions"][0]["name"] == "flaky"
        refused = cli(*as_reader, "submit", str(flaky_production(tmp_path, name="more")),
                      expect=5)
        assert "may not (manage)" in refused["message"]
        assert [row["name"] for row in cli("status")["productions"]] == ["flaky"]

        # ... but may file requests, which wait for a manager: one approved with a change,
        # one rejected
        for name in ("more", "other"):
            filed = cli(*as_reader, "submit", "--request",
                        str(flaky_production(tmp_path, name=name, jobs=3)))
            assert filed["productions"][0]["state"] == "requested"
        assert cli(*as_reader, "approve", "more", expect=5)["field"] is None
        waiting = cli("requests")["productions"]
        assert {row["name"]: row["jobs"] for row in waiting} == {"more": 0, "other": 0}
        assert cli("show", "more")["requested_by"] == "CN=monitor,OU=robots,O=gridtower"
        approved = cli("approve", "more", "--set", "events_total=2", "--note", "two will do")
        assert (approved["state"], approved["jobs_made"]) == ("active", 2)
        rejected = cli("reject", "other", "--reason", "duplicate of flaky")
        assert rejected["state"] == "rejected"
        cli("approve", "other", expect=4)
        assert cli("status", "more")["productions"][0]["jobs"] == 2
        shown = cli("show", "more")
        assert shown["decided_by"] == "CN=manager,OU=users,O=gridtower"
        assert shown["decision_note"] == "two will do"
        assert {row["key"]: row["from"] for row in shown["settings"]}["events_total"] == "more"
        assert cli("status", "other")["productions"][0]["jobs"] == 0
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=30)


def test_a_request_body_past_the_cap_is_refused_as_json(live_tower: Any) -> None:
    from web.app import MAX_BODY_BYTES, create_app

    tower = live_tower()
    client = create_app(tower.runtime).test_client()
    answer = client.post("/api/v1/productions", data=b"x" * (MAX_BODY_BYTES + 1),
                         content_type="application/json")
    assert answer.status_code == 413 and answer.get_json()["error"] == "Request Entity Too Large"
    assert tower.counts() == {}


def test_the_pages_answer_each_caller_as_its_role_allows(tower: Tower) -> None:
    submitted = tower.call("manager", "POST", "/productions",
                           {"text": tower.spec_file.read_text()})
    assert submitted.status_code == 200, submitted.text

    def page(who: str, path: str, method: str = "GET", **options: Any) -> requests.Response:
        return requests.request(method, tower.url + path, cert=tower.certs.get(who),
                                verify=tower.ca_cert, timeout=10, allow_redirects=False,
                                **options)

    for who in ("admin", "manager", "siteadmin", "reader"):
        answer = page(who, "/productions/flaky")
        assert answer.status_code == 200, (who, answer.text)
        assert answer.headers["Content-Type"].startswith("text/html")
        assert ('id="actions"' in answer.text) == ("manage" in MAY[who]), who
    for who in ("anonymous", "unknown_user", "pilot"):
        answer = page(who, "/")
        assert answer.status_code == (401 if who == "anonymous" else 403), who
        assert answer.headers["Content-Type"].startswith("text/html")
        assert 'role="alert"' in answer.text
    before = tower.digest()
    origin = {"Origin": tower.url}
    assert page("reader", "/productions/flaky/pause", "POST", headers=origin).status_code == 403
    # a form posted from another site, or with no origin at all, acts on nothing
    assert page("manager", "/productions/flaky/pause", "POST").status_code == 403
    assert page("manager", "/productions/flaky/pause", "POST",
                headers={"Origin": "https://elsewhere.example"}).status_code == 403
    assert tower.digest() == before
    answer = page("manager", "/productions/flaky/pause", "POST", headers=origin)
    assert answer.status_code == 303 and "paused" in answer.headers["Location"]
    assert tower.call("reader", "GET", "/productions/flaky").json()["state"] == "paused"
