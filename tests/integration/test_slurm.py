"""Pilots on the real single-node SLURM cluster, reached locally and over SSH: productions
through RabbitMQ, the factory's limits (also with two towers), draining before TIMEOUT,
host keys, and site values that must not become shell."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, col, select

from tests.cluster import SlurmCluster, SshServer
from tests.conftest import write_home
from tests.integration.conftest import LiveTower, assert_done_exactly_once, toy_production
from tower.config import load_config
from tower.loops import factory, monitor
from tower.management import productions
from tower.model.db import transaction
from tower.model.models import Attempt, FactoryDecision, Pilot, RetryDecision
from tower.model.states import PILOT_ACTIVE, PilotState
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime

pytestmark = [pytest.mark.slurm, pytest.mark.one_database]

LIMITS = {"max_queued": 2, "max_running": 3, "max_per_cycle": 2}


def slurm_site(**changes: Any) -> dict[str, Any]:
    site: dict[str, Any] = {
        "batch": "slurm", "batch_options": {"partition": "debug"},
        "pilot_command": [sys.executable, "-m", "pilots.main"],
        "pilot": {"slots": 4, "cores": 4, "walltime": "10m", "drain_margin": 5,
                  "idle_timeout": 4},
        "limits": LIMITS,
    }
    site.update(changes)
    return site


def ssh_access(server: SshServer, known_hosts: Path | None = None) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "user": server.user,
            "key_file": str(server.key_file),
            "known_hosts": str(known_hosts or server.known_hosts)}


def squeue_states(cluster: SlurmCluster) -> list[str]:
    """States of the pilots in SLURM's queue right now."""
    lines = cluster.run("squeue", "--noheader", "--format=%j|%T").stdout.splitlines()
    return [state for name, _, state in (line.partition("|") for line in lines)
            if name.startswith("gridtower-")]


@pytest.fixture
def on_slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    # the tower runs sbatch & co. here; over SSH the server's SetEnv does the same
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster


@pytest.mark.parametrize("access", ["local", "ssh"])
def test_a_production_runs_on_slurm_pilots_through_rabbitmq(
        amqp_url: str, on_slurm: SlurmCluster, sshd: SshServer,
        live_tower: Callable[..., LiveTower], tmp_path: Path, access: str) -> None:
    site = slurm_site(**({"ssh": ssh_access(sshd)} if access == "ssh" else {}))
    tower = live_tower(site=site, broker=amqp_url)
    tower.submit(toy_production(tmp_path, jobs=50, events=50))
    samples: list[list[str]] = []

    def sample_then_check() -> bool:
        samples.append(squeue_states(on_slurm))
        return tower.all_ended()

    tower.drive(sample_then_check, timeout=240, pause=0.3)
    assert_done_exactly_once(tower.runtime.engine, jobs=50)
    with Session(tower.runtime.engine) as session:
        pilots = {a.pilot_id for a in session.exec(select(Attempt)).all()}
        batch_ids = {p.batch_id for p in session.exec(select(Pilot)).all()}
    assert len(pilots) >= 2 and all(batch_id and batch_id.isdigit() for batch_id in batch_ids)
    # SLURM itself never held more pilots than the limits allow
    assert max(states.count("PENDING") for states in samples) <= LIMITS["max_queued"]
    assert max(states.count("RUNNING") for states in samples) <= LIMITS["max_running"]
    assert max(len(states) for states in samples) > 1  # the samples saw pilots at all


def test_a_cancelled_pilot_is_replaced_within_one_factory_cycle(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=slurm_site(limits={"max_queued": 1, "max_running": 1,
                                               "max_per_cycle": 1}))
    tower.submit(toy_production(tmp_path, jobs=6, events=200, sleep=0.01))
    victim = tower.running_attempt(timeout=120)
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, victim.pilot_id)
    assert pilot is not None and pilot.batch_id
    on_slurm.run("scancel", pilot.batch_id)

    def ended() -> bool:
        monitor.run_once(tower.runtime)
        with Session(tower.runtime.engine) as session:
            return session.get(Pilot, victim.pilot_id).state not in PILOT_ACTIVE  # type: ignore[union-attr]

    deadline = time.monotonic() + 60
    while not ended():
        assert time.monotonic() < deadline, "the cancelled pilot never ended"
        time.sleep(0.3)
    # backlog remains: the very next factory cycle submits a replacement
    assert factory.run_once(tower.runtime) == 1
    with Session(tower.runtime.engine) as session:
        attempt = session.get(Attempt, victim.id)
        fresh = session.exec(select(Pilot).where(Pilot.state == PilotState.SUBMITTED)).all()
    assert len(fresh) == 1 and fresh[0].batch_id
    # the payload the pilot was running was reported killed by the batch system's SIGTERM
    assert attempt is not None and attempt.outcome == Outcome.PILOT_KILLED
    assert "SIGTERM" in (attempt.reason or "")
    tower.drive(tower.all_ended, timeout=180)
    assert_done_exactly_once(tower.runtime.engine, jobs=6)
    # the standard policy retried it at once: the site's fault, not the payload's
    with Session(tower.runtime.engine) as session:
        decision = session.exec(select(RetryDecision).where(
            RetryDecision.job_id == victim.job_id)).one()
    assert (decision.rule, decision.action, decision.delay) == ("preempted", "retry", 0)


def test_a_pilot_with_a_short_walltime_drains_and_exits_before_timeout(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # SLURM's least --time is a minute; jobs of 20s walltime fit only in its first half
    tower = live_tower(site=slurm_site(
        pilot={"slots": 1, "walltime": "1m", "drain_margin": 10, "idle_timeout": 60},
        limits={"max_queued": 1, "max_running": 1, "max_per_cycle": 1}))
    tower.submit(toy_production(tmp_path, jobs=12, events=100, sleep=0.03, walltime="20s"))
    first = select(Pilot).order_by(col(Pilot.submitted_at))

    def first_pilot_ended() -> bool:
        with Session(tower.runtime.engine) as session:
            pilot = session.exec(first).first()
            return pilot is not None and pilot.state not in PILOT_ACTIVE

    tower.drive(first_pilot_ended, timeout=120, pause=0.5)
    with Session(tower.runtime.engine) as session:
        pilot = session.exec(first).first()
    assert pilot is not None and pilot.batch_id
    assert pilot.state == PilotState.DONE and "too short for the next job" in (pilot.message
                                                                               or "")
    # the goodbye comes just before the process exits: wait for SLURM to see the end
    batch = tower.runtime.batch_system("local")
    deadline = time.monotonic() + 60
    while (status := batch.statuses([pilot.batch_id])[pilot.batch_id]).state != "ended":
        assert time.monotonic() < deadline, f"SLURM still has the pilot: {status}"
        time.sleep(0.5)
    assert status.reason == "COMPLETED"  # it left by itself: not TIMEOUT


def test_two_towers_together_never_exceed_the_site_limits(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=slurm_site())
    tower.submit(toy_production(tmp_path, jobs=200, events=10))
    other = Runtime.open(tower.runtime.config, create=False)
    errors: list[BaseException] = []
    cycles = [0, 0]

    def factory_loop(number: int, runtime: Runtime) -> None:
        # long enough for pilots to start and register, so running pilots count too
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline and cycles[number] < 500:
                factory.run_once(runtime)
                cycles[number] += 1
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=factory_loop, args=(number, runtime))
               for number, runtime in enumerate((tower.runtime, other))]
    worst = {"pending": 0, "alive": 0}
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            with Session(tower.runtime.engine) as session:
                states = [p.state for p in session.exec(select(Pilot)).all()]
            worst["pending"] = max(worst["pending"], states.count(PilotState.SUBMITTED))
            worst["alive"] = max(worst["alive"], sum(s in PILOT_ACTIVE for s in states))
            time.sleep(0.02)
    finally:
        for thread in threads:
            thread.join(timeout=60)
        other.close()
    assert not errors, errors
    assert worst["pending"] <= LIMITS["max_queued"]
    assert worst["alive"] <= LIMITS["max_running"]
    assert worst["alive"] == LIMITS["max_running"]  # the limit was reached: it could fail
    with Session(tower.runtime.engine) as session:
        decisions = session.exec(select(FactoryDecision)).all()
    assert len(decisions) == min(sum(cycles), factory.DECISIONS_KEPT)


def test_sites_check_passes_over_ssh_and_refuses_unknown_or_changed_host_keys(
        on_slurm: SlurmCluster, sshd: SshServer, tmp_path: Path) -> None:
    sites = {"ok": {"ssh": ssh_access(sshd)},
             "unknown": {"ssh": ssh_access(sshd, sshd.empty_known_hosts)},
             "changed": {"ssh": ssh_access(sshd, sshd.wrong_known_hosts)}}
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}",
                        slurm_site(), more_sites={name: {**slurm_site(), **extra}
                                                  for name, extra in sites.items()})

    def check(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tower.cli", "--config", str(config),
                               "sites", "check", name], capture_output=True, text=True,
                              timeout=120)

    passed = check("ok")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    lines = passed.stdout.splitlines()
    assert lines[0].startswith("PASS  access: reached ssh://root@127.0.0.1:")
    assert {line.split(":")[0] for line in lines} == {
        "PASS  access", "PASS  command sbatch", "PASS  command squeue", "PASS  command scancel",
        "PASS  pilot program", "PASS  scratch writable", "PASS  storage writable"}
    unknown, changed = check("unknown"), check("changed")
    assert unknown.returncode == changed.returncode == 1
    assert "FAIL  access" in unknown.stdout and "host key unknown" in unknown.stdout
    assert "FAIL  access" in changed.stdout and "host key differs" in changed.stdout
    assert check("local").returncode == 0


@pytest.mark.parametrize("access", ["local", "ssh"])
def test_site_values_with_shell_metacharacters_never_run(
        on_slurm: SlurmCluster, sshd: SshServer, tmp_path: Path, access: str) -> None:
    marker = tmp_path / "pwned"
    evil = f"x; touch {marker}; $(touch {marker}) `touch {marker}`"
    site = slurm_site(scratch=str(tmp_path / evil), storage=str(tmp_path / "s" / evil),
                      # (a partition with them is refused at load: tests/security)
                      batch_options={"partition": "debug"},
                      **({"ssh": ssh_access(sshd)} if access == "ssh" else {}))
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}", site)
    runtime = Runtime.open(load_config(config))
    try:
        request = tmp_path / "p.yaml"
        request.write_text(yaml.safe_dump({"name": "p", "software": "s", "command": ["true"],
                                           "walltime": "1m", "events_total": 1,
                                           "events_per_job": 1}))
        from tower.management import productions
        from tower.model.db import transaction

        with transaction(runtime.engine) as session:
            for item in productions.plan(session, request, runtime.config):
                productions.create(session, item)
        # the partition is refused by SLURM as a name, and nothing else happens
        factory.run_once(runtime)
        with Session(runtime.engine) as session:
            [pilot] = session.exec(select(Pilot)).all()
        assert pilot.state == PilotState.LOST and "sbatch exited" in (pilot.message or "")
        from tower.loops.site_check import check_site

        site_config = runtime.config.sites["local"]
        checks = check_site(site_config, runtime.batch_system("local"),
                            runtime.runner("local"), [sys.executable, "-m", "pilots.main"])
        # the odd directory names are just names: created, written, no command run
        assert all(check.passed for check in checks), checks
        assert (tmp_path / evil).is_dir()
    finally:
        runtime.close()
    assert not marker.exists()


def test_pending_pilots_are_cancelled_when_unwanted_and_the_decisions_explained(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # --hold keeps the pilots pending in SLURM for as long as the test needs
    tower = live_tower(site=slurm_site(batch_options={"partition": "debug", "extra": ["--hold"]},
                                       limits={**LIMITS, "max_queue_wait": "2s"}))
    tower.submit(toy_production(tmp_path, jobs=20))
    assert factory.run_once(tower.runtime) == 2

    def pilots() -> dict[str, str]:
        with Session(tower.runtime.engine) as session:
            return {p.batch_id or "": p.state for p in session.exec(select(Pilot)).all()}

    first = pilots()
    assert set(first.values()) == {PilotState.SUBMITTED}
    # pending past max_queue_wait: cancelled, and replaced in the same cycle
    time.sleep(2.5)
    assert factory.run_once(tower.runtime) == 2
    second = pilots()
    assert all(second[batch_id] == PilotState.DONE for batch_id in first)
    assert sorted(second.values()).count(PilotState.SUBMITTED) == 2
    # no work left: every pending pilot is cancelled, none submitted
    with transaction(tower.runtime.engine) as session:
        productions.control(session, "toy", "cancel", "test")
    assert factory.run_once(tower.runtime) == 0
    assert set(pilots().values()) == {PilotState.DONE}

    def in_squeue() -> list[str]:
        return [line for line in on_slurm.run("squeue", "--noheader", "--format=%i").stdout
                .split() if line in second]

    deadline = time.monotonic() + 30
    while in_squeue():
        assert time.monotonic() < deadline, "cancelled pilots stayed in SLURM's queue"
        time.sleep(0.3)

    explained = subprocess.run(
        [sys.executable, "-m", "tower.cli", "--config", str(tower.runtime.config.path),
         "sites", "explain", "local"], capture_output=True, text=True, timeout=60)
    assert explained.returncode == 0, explained.stderr
    notes = explained.stdout.splitlines()
    assert len(notes) == 3
    assert "pending 0/2, running 0/3, draining 0, backlog 20: submit 2" in notes[0]
    assert "submit 2, cancel 2 (pending longer than 2s)" in notes[1]
    assert "backlog 0: submit 0, cancel 2 (no backlog left)" in notes[2]
    listed = subprocess.run(
        [sys.executable, "-m", "tower.cli", "--config", str(tower.runtime.config.path),
         "pilots", "--json"], capture_output=True, text=True, timeout=60)
    rows = json.loads(listed.stdout)["pilots"]
    assert len(rows) == 4 and all("cancelled while pending" in row["message"] for row in rows)
