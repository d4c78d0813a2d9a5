"""A pilot credential tried as an attacker would (its payload can read it): whatever it names
outside its own job is refused, logged once, and the tower creates nothing outside its roots.

The pilots here are real pilots of the tower's API, registered over HTTP on loopback; the
tower's loops (the stager among them) are driven after each attack to show they fetch nothing.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlmodel import Session, select

from tests.cluster import SshDaemon
from tests.integration.conftest import LiveTower, live_tower, toy_production  # noqa: F401
from tower.model.db import transaction
from tower.model.models import Attempt, Output, Pilot, QueueMessage

#: Unique to this run, in every name an attack tries to create, to look for it anywhere.
TOKEN = f"gridtower-attack-{uuid.uuid4().hex[:8]}"


@dataclass
class Claimed:
    tower: LiveTower
    url: str
    job: int
    attempt: int
    stage: Path
    storage: Path

    def call(self, pilot: str, action: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/api/v1/pilots/{pilot}/{action}", json=body,
                             timeout=30)

    def report(self, outputs: list[dict[str, Any]], pilot: str = "p1",
               job: int | None = None) -> dict[str, Any]:
        answer = self.call(pilot, "report", {"reports": [{
            "job": job or self.job, "attempt": self.attempt, "ending": "finished",
            "exit_code": 0, "outputs": outputs}]})
        assert answer.status_code == 200, answer.text
        [verdict] = answer.json()["verdicts"]
        return verdict  # type: ignore[no-any-return]

    def drive(self, cycles: int = 3) -> None:
        """Every loop but the factory (no real pilot may take the jobs), `cycles` times."""
        done = iter(range(cycles + 1))
        self.tower.drive(lambda: next(done) == cycles, timeout=60, pause=0.1,
                         without=("factory",))


def tree(*roots: Path) -> set[str]:
    """Every path under `roots`, the database's own files aside."""
    return {str(path) for root in roots for path in root.rglob("*")
            if not path.name.startswith("tower.db")}


def attack_traces() -> list[str]:
    """Anything named with this run's token at the filesystem's root or in its /tmp."""
    return [str(path) for top in (Path("/"), Path("/tmp")) for path in top.iterdir()
            if TOKEN in path.name]


def connect(tower: LiveTower, pilots: tuple[str, ...] = ("p1", "p2")) -> str:
    with transaction(tower.runtime.engine) as session:
        for pilot in pilots:
            session.add(Pilot(id=pilot, site="local"))
    url = str(tower.runtime.config.api.url)
    for pilot in pilots:
        answer = requests.post(f"{url}/api/v1/pilots/{pilot}/register",
                               json={"host": "node1\n\x1b[2J"}, timeout=30)
        assert answer.status_code == 200, answer.text
    return url


def lease_and_claim(tower: LiveTower, url: str, pilot: str) -> tuple[int, int, str]:
    answer = requests.post(f"{url}/api/v1/pilots/{pilot}/lease",
                           json={"queue": "local.default", "max": 1}, timeout=30)
    [message] = answer.json()["messages"]
    answer = requests.post(f"{url}/api/v1/pilots/{pilot}/claim",
                           json={"jobs": [[message["job"], message["attempt"]]]}, timeout=30)
    [claim] = answer.json()["jobs"]
    assert claim["granted"], claim
    return claim["job"], claim["attempt"], claim["production"]


def claim(tower: LiveTower, tmp_path: Path) -> Claimed:
    """A production of two jobs; pilot p1 holds one, p2 is registered too."""
    tower.submit(toy_production(tmp_path, jobs=2))
    tower.drive(lambda: tower.counts().get("queued", 0) == 2, timeout=30, without=("factory",))
    url = connect(tower)
    job, attempt, production = lease_and_claim(tower, url, "p1")
    storage = Path(tower.runtime.config.sites["local"].storage)
    stage = storage / production / f"{job}.{attempt}"
    stage.mkdir(parents=True)
    return Claimed(tower, url, job, attempt, stage, storage)


@pytest.fixture
def claimed(live_tower: Callable[..., LiveTower], tmp_path: Path) -> Iterator[Claimed]:  # noqa: F811
    yield claim(live_tower(), tmp_path)
    for trace in attack_traces():
        os.unlink(trace)


@pytest.fixture
def claimed_over_ssh(live_tower: Callable[..., LiveTower], sftp_server: SshDaemon,  # noqa: F811
                     tmp_path: Path) -> Iterator[Claimed]:
    """The same at a site reached by SSH: the stager fetches outputs over SFTP into scratch."""
    access = sftp_server.server
    yield claim(live_tower(site={"ssh": {
        "host": access.host, "port": access.port, "user": access.user,
        "key_file": str(access.key_file), "known_hosts": str(access.known_hosts)}}), tmp_path)
    for trace in attack_traces():
        os.unlink(trace)


def output(name: str, path: str | Path) -> dict[str, Any]:
    return {"name": name, "path": str(path), "size": 3, "adler32": "024d0127"}


def attacks(c: Claimed, tmp_path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Each attack: the output a pilot reports, and the field its refusal must name."""
    (c.stage / "decays_0.csv").write_bytes(b"abc")
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"abc")
    (c.stage / "decays_9.csv").symlink_to(secret)
    other = c.storage / c.stage.parent.name / f"{c.job + 1}.1"
    return {
        "dot-dot": (output(f"../../{TOKEN}", c.stage / "decays_0.csv"), "outputs[0].name"),
        "absolute": (output(f"/tmp/{TOKEN}", c.stage / "decays_0.csv"), "outputs[0].name"),
        "sub-dir": (output("a/decays_0.csv", c.stage / "a" / "decays_0.csv"),
                    "outputs[0].name"),
        "newline": (output("decays_0.csv\nWARNING forged line", c.stage / "decays_0.csv"),
                    "outputs[0].name"),
        "no-pattern": (output("notes.txt", c.stage / "notes.txt"), "outputs[0].name"),
        "other-attempt": (output("decays_0.csv", other / "decays_0.csv"), "outputs[0].path"),
        "outside-storage": (output("decays_0.csv", "/etc/passwd"), "outputs[0].path"),
        "long-path": (output("decays_0.csv", "/" + "a/" * 2000), "outputs[0].path"),
        "dot-dot-path": (output("decays_0.csv", c.stage / ".." / c.stage.name / "decays_0.csv"),
                         "outputs[0].path"),
        "symlink-out": (output("decays_9.csv", c.stage / "decays_9.csv"), "outputs[0].path"),
    }


@pytest.mark.parametrize("attack", ["dot-dot", "absolute", "sub-dir", "newline",
                                    "no-pattern", "other-attempt", "outside-storage", "long-path",
                                    "dot-dot-path", "symlink-out"])
def test_an_output_outside_the_job_is_refused_and_nothing_is_fetched(
        claimed: Claimed, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        attack: str) -> None:
    reported, field = attacks(claimed, tmp_path)[attack]
    before = tree(tmp_path)
    with caplog.at_level(logging.INFO):
        verdict = claimed.report([reported])
        claimed.drive()
    assert not verdict["accepted"] and verdict["reason"].startswith(f"refused: {field}: ")
    with Session(claimed.tower.runtime.engine) as session:
        assert session.exec(select(Output)).all() == []
        attempt = session.exec(select(Attempt).where(Attempt.job_id == claimed.job)).one()
    assert attempt.outcome == "missing_output" and "report refused" in (attempt.reason or "")
    # (the policy's decision that follows quotes the attempt's reason, at INFO)
    refused = [r for r in caplog.records
               if "report refused" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    # no caller's string starts a line of its own in the tower's log
    assert not [r for r in caplog.records if "\nWARNING forged" in r.getMessage()]
    assert tree(tmp_path) == before and attack_traces() == []


def test_a_nul_in_an_output_name_is_refused_at_the_edge(claimed: Claimed, tmp_path: Path) -> None:
    before = tree(tmp_path)
    answer = claimed.call("p1", "report", {"reports": [{
        "job": claimed.job, "attempt": claimed.attempt, "ending": "finished", "exit_code": 0,
        "outputs": [output("decays_0\x00.csv", claimed.stage / "decays_0.csv")]}]})
    assert answer.status_code == 400 and answer.json()["field"] == "reports.0.outputs.0.name"
    claimed.drive()
    with Session(claimed.tower.runtime.engine) as session:
        assert session.exec(select(Output)).all() == []
    assert tree(tmp_path) == before and attack_traces() == []


def test_a_report_for_another_pilots_job_changes_nothing(claimed: Claimed) -> None:
    (claimed.stage / "decays_0.csv").write_bytes(b"abc")
    verdict = claimed.report([output("decays_0.csv", claimed.stage / "decays_0.csv")],
                             pilot="p2")
    assert not verdict["accepted"] and "no running attempt of this pilot" in verdict["reason"]
    with Session(claimed.tower.runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == claimed.job)).one()
        assert attempt.ended_at is None and session.exec(select(Output)).all() == []


def test_a_pilot_releases_only_its_own_messages(claimed: Claimed) -> None:
    """p2 cannot put back what p1 leased (and the count says so)."""
    answer = claimed.call("p1", "lease", {"queue": "local.default", "max": 1})
    [message] = answer.json()["messages"]
    stolen = claimed.call("p2", "release", {"ids": [message["id"]]})
    assert stolen.status_code == 200 and stolen.json() == {"released": 0}
    with Session(claimed.tower.runtime.engine) as session:
        row = session.get(QueueMessage, message["id"])
        assert row is not None and row.lease_owner == "p1"
    own = claimed.call("p1", "release", {"ids": [message["id"]]})
    assert own.json() == {"released": 1}


@pytest.mark.parametrize(("body", "field"), [
    ({"job": 2**64, "attempt": 1}, "reports.0.job"),
    ({"exit_code": 256}, "reports.0.exit_code"),
    ({"exit_code": -1}, "reports.0.exit_code"),
    ({"signal": 0}, "reports.0.signal"),
    ({"log_tail": "x" * 70000}, "reports.0.log_tail"),
    ({"max_rss_mb": 2**63}, "reports.0.max_rss_mb"),
    ({"cpu_seconds": -1.0}, "reports.0.cpu_seconds"),
    ({"cpu_seconds": 1e300}, "reports.0.cpu_seconds"),
    ({"wall_seconds": 1e12}, "reports.0.wall_seconds"),
    ({"ending": "out_of_mind"}, "reports.0.ending"),
    ({"outputs": [{**output("decays_0.csv", "/x"), "size": 2**63}]},
     "reports.0.outputs.0.size"),
])
def test_a_report_out_of_bounds_is_a_400_naming_the_field(
        claimed: Claimed, body: dict[str, Any], field: str) -> None:
    report = {"job": claimed.job, "attempt": claimed.attempt, "ending": "finished", **body}
    answer = claimed.call("p1", "report", {"reports": [report]})
    assert answer.status_code == 400 and answer.json()["field"] == field, answer.text
    with Session(claimed.tower.runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == claimed.job)).one()
        assert attempt.ended_at is None


def test_free_strings_are_kept_without_control_characters(claimed: Claimed) -> None:
    answer = claimed.call("p1", "report", {"reports": [{
        "job": claimed.job, "attempt": claimed.attempt, "ending": "setup",
        "reason": "disk full\n\x1b[2Jforged", "log_tail": "line 1\nline 2\ttab\x1b"}]})
    assert answer.status_code == 200, answer.text
    with Session(claimed.tower.runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == claimed.job)).one()
    assert attempt.log_tail == "line 1\nline 2\ttab"
    assert attempt.reason == "disk full[2Jforged"
    with Session(claimed.tower.runtime.engine) as session:
        pilot = session.get(Pilot, "p1")
    assert pilot is not None and pilot.host == "node1[2J"


def staged_outputs(c: Claimed) -> list[Path]:
    """Every file at the production's destination (tower.yaml's `store`)."""
    return [path for path in (c.tower.home / "store").rglob("*") if path.is_file()]


def test_the_stager_never_fetches_to_a_name_that_leaves_its_scratch(
        claimed_over_ssh: Claimed, tmp_path: Path) -> None:
    """Defense in depth: an output row whose name leaves the scratch dir (as a report
    accepted before names were checked left them) is never fetched; it fails as stageout."""
    c = claimed_over_ssh
    (c.stage / "decays_0.csv").write_bytes(b"abc")
    assert c.report([output("decays_0.csv", c.stage / "decays_0.csv")])["accepted"]
    with transaction(c.tower.runtime.engine) as session:
        row = session.exec(select(Output)).one()
        row.name = f"../../{TOKEN}"
        session.add(row)
    before = tree(tmp_path)
    c.drive()
    assert attack_traces() == [] and tree(tmp_path) == before
    with Session(c.tower.runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == c.job)).one()
    assert attempt.outcome == "stageout" and TOKEN in (attempt.reason or "")


def test_the_stager_never_follows_a_link_out_of_site_storage(
        claimed_over_ssh: Claimed, tmp_path: Path) -> None:
    """At a site reached by SSH the tower cannot see the files when the report comes, and a
    file may become a link afterwards (another payload of the same account): the stager
    resolves the path on the server and refuses one that leaves the storage."""
    c = claimed_over_ssh
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"abc")
    (c.stage / "decays_0.csv").write_bytes(b"abc")
    assert c.report([output("decays_0.csv", c.stage / "decays_0.csv")])["accepted"]
    (c.stage / "decays_0.csv").unlink()
    (c.stage / "decays_0.csv").symlink_to(secret)
    c.drive()
    assert staged_outputs(c) == []
    with Session(c.tower.runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == c.job)).one()
    assert attempt.outcome == "stageout" and "leaves its root" in (attempt.reason or "")


def test_an_output_name_never_forges_a_line_of_the_towers_log(
        claimed: Claimed, caplog: pytest.LogCaptureFixture) -> None:
    """Behind the report's checks, every log line quotes a caller's string: an output row
    named with a newline (as a report accepted before names were checked left them) is
    logged escaped by the stager, and fails as stageout."""
    (claimed.stage / "decays_0.csv").write_bytes(b"abc")
    assert claimed.report([output("decays_0.csv", claimed.stage / "decays_0.csv")])["accepted"]
    with transaction(claimed.tower.runtime.engine) as session:
        row = session.exec(select(Output)).one()
        row.name = "decays_0.csv\nWARNING forged line"
        session.add(row)
    with caplog.at_level(logging.INFO):
        claimed.drive()
    said = [record.getMessage() for record in caplog.records]
    assert any("'decays_0.csv\\nWARNING forged line'" in line for line in said), said
    assert not [line for line in said if "\nWARNING forged" in line]


def test_a_pilot_leases_only_from_its_own_sites_queues(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:  # noqa: F811
    """Site `local`'s pilot may not read the queue of site `local.x`, whose name starts
    like its own queues' names."""
    tower = live_tower(more_sites={"local.x": {}})
    with transaction(tower.runtime.engine) as session:
        session.add(Pilot(id="p1", site="local"))
    url = str(tower.runtime.config.api.url)
    requests.post(f"{url}/api/v1/pilots/p1/register", json={}, timeout=30)
    for queue in ("local.x.default", "local.", "local.default.x"):
        answer = requests.post(f"{url}/api/v1/pilots/p1/lease",
                               json={"queue": queue, "max": 1}, timeout=30)
        assert answer.status_code == 400 and answer.json()["field"] == "queue", queue
    answer = requests.post(f"{url}/api/v1/pilots/p1/lease",
                           json={"queue": "local.default", "max": 1}, timeout=30)
    assert answer.status_code == 200
