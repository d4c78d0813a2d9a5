"""Pilots through a real ARC Computing Element (tests/arcce.py: A-REX with the fork batch
system on loopback), reached over its REST interface with a robot certificate: a
production, a pilot killed through the CE, the CE stopped mid-production, and a
certificate the CE refuses."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlmodel import Session, select

from tests.arcce import NOBODY, PYTHON, ArcCE
from tests.conftest import tls_api
from tests.integration.conftest import (
    LiveTower,
    assert_done_exactly_once,
    toy_production,
)
from tower.auth import ca
from tower.model.models import Attempt, Pilot, RetryDecision, SiteQueue
from tower.model.states import PILOT_ACTIVE
from tower.retries.outcomes import Outcome

pytestmark = [pytest.mark.arc, pytest.mark.one_database, pytest.mark.xdist_group("arc")]



def arc_site(ce: ArcCE, name: str, **changes: Any) -> dict[str, Any]:
    """A site that is the CE; its pilots (nobody) run a copy of this tree's pilot package
    with Debian's python3."""
    site: dict[str, Any] = {
        "batch": "arc", "batch_options": ce.site_options(),
        "pilot_command": [PYTHON, "-m", "pilots.main"],
        "setup": [f"export PYTHONPATH={shlex.quote(str(ce.code))}"],
        "pilot": {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5,
                  "idle_timeout": 5},
        "limits": {"max_queued": 2, "max_running": 3, "max_per_cycle": 2, "error_pause": 2},
        "scratch": str(ce.shared(f"{name}/scratch")),
        "storage": str(ce.shared(f"{name}/storage")),
    }
    site.update(changes)
    return site


def https_home(home: Path) -> dict[str, Any]:
    """The tower's API over HTTPS, its CA giving each pilot a credential of its own."""
    authority = ca.init_ca(home / "ca", "test CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
    return tls_api(pilot_ca=True)


def pilots_of(tower: LiveTower) -> list[Pilot]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Pilot)).all())


def site_error(tower: LiveTower) -> str:
    with Session(tower.runtime.engine) as session:
        row = session.get(SiteQueue, ("local", "default"))
        return (row.last_error or "") if row else ""


def test_a_production_of_20_jobs_runs_through_the_arc_ce(
        arc_ce: ArcCE, amqp_url: str, live_tower: Callable[..., LiveTower],
        tmp_path: Path) -> None:
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name), broker=amqp_url,
                       api=https_home(tmp_path / "home"))
    tower.submit(toy_production(tmp_path, jobs=20, events=50, examples=arc_ce.code / "examples"))
    tower.drive(tower.all_ended, timeout=240, pause=0.5)
    assert_done_exactly_once(tower.runtime.engine, jobs=20)
    pilots = pilots_of(tower)
    # ARC job ids, and pilots that took jobs
    assert all(pilot.batch_id and not pilot.batch_id.isdigit() for pilot in pilots)
    with Session(tower.runtime.engine) as session:
        worked = {attempt.pilot_id for attempt in session.exec(select(Attempt)).all()}
    assert worked and worked <= {pilot.id for pilot in pilots}
    # the secrets travelled as input files: no job description the CE keeps holds one
    password = amqp_url.split(":")[2].split("@")[0]
    descriptions = list((arc_ce.directory / "control").glob("job.*.description"))
    assert descriptions
    for description in descriptions:
        text = description.read_text()
        assert "PRIVATE KEY" not in text and password not in text
        assert "BEGIN CERTIFICATE" not in text


def test_a_pilot_killed_through_the_ce_is_mapped_and_its_job_retried(
        arc_ce: ArcCE, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name, pilot={
        "slots": 1, "walltime": "10m", "drain_margin": 5, "idle_timeout": 5},
        limits={"max_queued": 1, "max_running": 1, "max_per_cycle": 1}))
    # the first attempt outlasts what the CE takes to say KILLED (its information system
    # refreshes once a minute); the retry runs at once
    command = ["/bin/sh", "-c", 'if [ "$$1" = 1 ]; then sleep 150; fi; shift; exec "$$@"',
               "payload", "${attempt}", "${python}", str(arc_ce.code / "examples" / "toysim.py"),
               "--steering", "steering.json", "--output-dir", "${output_dir}"]
    tower.submit(toy_production(tmp_path, jobs=1, events=50, command=command))
    victim = tower.running_attempt(timeout=120)
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, victim.pilot_id)
    assert pilot is not None and pilot.batch_id
    tower.runtime.batch_system("local").cancel([pilot.batch_id])

    def ended() -> bool:
        with Session(tower.runtime.engine) as session:
            attempt = session.get(Attempt, victim.id)
            gone = session.get(Pilot, victim.pilot_id)
            return (attempt is not None and attempt.ended_at is not None
                    and gone is not None and gone.state not in PILOT_ACTIVE)

    tower.drive(ended, timeout=140, pause=0.5)
    with Session(tower.runtime.engine) as session:
        attempt = session.get(Attempt, victim.id)
    assert attempt is not None and attempt.outcome == Outcome.PILOT_KILLED
    # the fork back end killed the job's wrapper alone (the CE says KILLED): the pilot,
    # written off, is refused at its next heartbeat and stops its payload then, not when
    # the payload's 150 s end
    deadline = time.monotonic() + 30
    while sleepers(arc_ce) and time.monotonic() < deadline:
        tower.cycles(1, pause=0.5)
    assert not sleepers(arc_ce)
    tower.drive(tower.all_ended, timeout=180, pause=0.5)
    assert_done_exactly_once(tower.runtime.engine, jobs=1)
    # the standard policy retried it at once: the site's doing, not the payload's
    with Session(tower.runtime.engine) as session:
        decision = session.exec(select(RetryDecision).where(
            RetryDecision.job_id == victim.job_id)).one()
    assert decision.action == "retry"


def sleepers(ce: ArcCE) -> list[int]:
    """The CE's jobs' processes that run `sleep 150` (the payload of the test above)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and entry.stat().st_uid == NOBODY
                    and (entry / "cmdline").read_bytes() == b"sleep\x00150\x00"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


#: A pilot's process that burns CPU (bounded: the CE's limit ends it far sooner).
BURN = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"


def test_a_pilot_past_its_walltime_is_ended_by_the_ce_and_mapped_pilot_killed(
        arc_ce: ArcCE, tmp_path: Path) -> None:
    # the fork back end enforces the job's walltime as a CPU-time limit (ulimit -t) of
    # each of its processes: the pilot's own process (the job script execs it) burns
    # past its three seconds, and the kernel kills it
    from sites.arc import ArcBatch
    from sites.batch import BatchState, PilotRequest
    from sites.config import SiteConfig
    from sites.runner import LocalRunner

    site = SiteConfig(**{**arc_site(arc_ce, tmp_path.name, pilot={
        "slots": 1, "cores": 1, "walltime": "3s", "drain_margin": 1, "idle_timeout": 1}),
        "name": "grid"})
    batch = ArcBatch(site, LocalRunner())
    job_id = batch.submit(PilotRequest("burner", [PYTHON, "-c", BURN]))
    # the CE's information system says FAILED within about a minute
    deadline = time.monotonic() + 150
    seen = batch.statuses([job_id])[job_id]
    while seen.state is not BatchState.ENDED and time.monotonic() < deadline:
        time.sleep(1)
        seen = batch.statuses([job_id])[job_id]
    # what the CE says: FAILED, by the exit code of a process SIGKILLed at its hard
    # limit, and that it used its walltime; sites.arc reads that as the pilot's walltime
    assert batch._jobs("status", {"job": [{"id": job_id}]})["job"]["state"] == "FAILED"
    assert seen.state is BatchState.ENDED and seen.outcome == "pilot_killed"
    assert seen.reason is not None and "exit code - 137 != 0" in seen.reason
    assert "walltime" in seen.reason
    # the pilot's unfinished attempts get that outcome, which the standard policy retries
    # at once (test_a_pilot_killed_through_the_ce_is_mapped_and_its_job_retried)


def test_the_ce_stopped_mid_production_pauses_the_factory_until_it_is_back(
        arc_ce: ArcCE, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # one slot a pilot, room for three: the factory wants pilots while the CE is away
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name, pilot={
        "slots": 1, "walltime": "10m", "drain_margin": 5, "idle_timeout": 5}, limits={
        "max_queued": 1, "max_running": 3, "max_per_cycle": 1, "error_pause": 3}))
    tower.submit(toy_production(tmp_path, jobs=10, events=200, sleep=0.01,
                                examples=arc_ce.code / "examples"))
    first = tower.running_attempt(timeout=120)
    arc_ce.stop()
    stopped = time.monotonic()
    try:
        done_before = tower.counts().get("done", 0)

        def jobs_done_and_error_seen() -> bool:
            return (tower.counts().get("done", 0) > done_before
                    and "site=local: the CE" in site_error(tower))

        # the pilots already running go on taking jobs; the factory meets the error
        tower.drive(jobs_done_and_error_seen, timeout=90, pause=0.5)
        with Session(tower.runtime.engine) as session:
            attempt = session.get(Attempt, first.id)
        assert attempt is not None and attempt.outcome == Outcome.SUCCESS
        # one try per error_pause at most, not one per cycle
        refused = [pilot for pilot in pilots_of(tower)
                   if "submission failed" in (pilot.message or "")]
        assert 1 <= len(refused) <= (time.monotonic() - stopped) / 3 + 1
    finally:
        arc_ce.start()
    tower.drive(tower.all_ended, timeout=240, pause=0.5)
    assert_done_exactly_once(tower.runtime.engine, jobs=10)


def test_a_certificate_the_ce_refuses_is_a_clear_error_without_a_retry_storm(
        arc_ce: ArcCE, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    options = arc_ce.site_options(certificate=str(arc_ce.stranger_certificate),
                                  key=str(arc_ce.stranger_key))
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name, batch_options=options, limits={
        "max_queued": 2, "max_running": 2, "max_per_cycle": 2, "error_pause": 600}))
    tower.submit(toy_production(tmp_path, jobs=4, examples=arc_ce.code / "examples"))
    tower.cycles(10, pause=0.1)
    pilots = pilots_of(tower)
    assert len(pilots) == 2 and all(pilot.state not in PILOT_ACTIVE for pilot in pilots)
    assert "TLS with the CE" in site_error(tower)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tower.cli", "--config",
                               str(tower.home / "tower.yaml"), *argv], capture_output=True,
                              text=True, timeout=120)

    listing = cli("sites")
    assert "credential: refused" in listing.stdout and "TLS with the CE" in listing.stdout
    check = cli("sites", "check", "local")
    assert check.returncode == 1
    assert "FAIL  CE info: site=local: TLS with the CE" in check.stdout
    # still the two pilots of the first cycle: the factory waits out error_pause
    tower.cycles(5, pause=0.1)
    assert len(pilots_of(tower)) == 2


def test_sites_check_exercises_the_ce(arc_ce: ArcCE, live_tower: Callable[..., LiveTower],
                                      tmp_path: Path) -> None:
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name))
    done = subprocess.run([sys.executable, "-m", "tower.cli", "--config",
                           str(tower.home / "tower.yaml"), "sites", "check", "local"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines()}
    assert "fork" in lines["PASS  CE info"]
    assert "proxy delegated until" in lines["PASS  CE credential"]
    assert "cleaned" in lines["PASS  CE job submit, status, clean"]


def test_the_proxy_is_renewed_in_place_once_less_than_proxy_renewal_remains(
        arc_ce: ArcCE, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    from sites.arc import ArcBatch
    from sites.config import SiteConfig
    from sites.runner import LocalRunner

    site = SiteConfig(**{**arc_site(arc_ce, tmp_path.name), "name": "grid", "batch_options": {
        **arc_ce.site_options(), "proxy_lifetime": "2h", "proxy_renewal": "1h"}})
    batch = ArcBatch(site, LocalRunner())
    first = batch._delegated()
    assert batch._delegated() == first  # two hours left: kept
    # an hour and a half later (as the batch system sees it), less than an hour remains
    batch._delegation = (first[0], first[1] - datetime.timedelta(minutes=90))
    renewed = batch._delegated()
    assert renewed[0] == first[0] and renewed[1] >= first[1]
    # the CE holds the renewed proxy under the same delegation
    held = batch._call("POST", f"delegations/{first[0]}", params={"action": "get"}).content
    assert x509.load_pem_x509_certificates(held)[0].not_valid_after_utc == renewed[1]
    # and `tower sites` shows the robot and a proxy, with their ends, as the monitor read them
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name))
    tower.cycles(1)
    listing = subprocess.run([sys.executable, "-m", "tower.cli", "--config",
                              str(tower.home / "tower.yaml"), "sites"], capture_output=True,
                             text=True, timeout=120)
    assert "credential: robot CN=tower robot,OU=robots,O=gridtower until " in listing.stdout
    assert "; proxy delegated until " in listing.stdout


def test_sites_shows_the_last_read_credential_at_once_while_the_ce_is_stopped(
        arc_ce: ArcCE, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=arc_site(arc_ce, tmp_path.name))
    tower.cycles(1)  # the monitor reads the robot and delegates a proxy

    def sites(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tower.cli", "--config",
                               str(tower.home / "tower.yaml"), "sites", *options],
                              capture_output=True, text=True, timeout=120)

    arc_ce.stop()
    try:
        assert not arc_ce.answers()
        # the listing asks the CE nothing: the last state the monitor read, and when
        listing = sites()
        assert listing.returncode == 0, listing.stderr
        [line] = [line for line in listing.stdout.splitlines() if "credential:" in line]
        assert "credential: robot CN=tower robot,OU=robots,O=gridtower until " in line
        assert "; proxy delegated until " in line and " (read " in line
        assert "refused" not in line
        # the monitor's next cycle holds its delegation: the state it shows is still true
        tower.cycles(1)
        assert "; proxy delegated until " in sites().stdout
        # --live asks the CE now, from this process (which delegated nothing): refused
        live = sites("--live")
        assert "credential: refused: " in live.stdout, live.stdout
    finally:
        arc_ce.start()
