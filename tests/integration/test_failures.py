"""Failure handling end to end: the retry policy on real failures, lost work, site health,
and the production manager's commands (failures, retry, release, why, policy simulate).

The issue's scenarios run on the real single-node SLURM with PostgreSQL (and RabbitMQ
where the broker matters); the manager's commands and the tower's own failure classes
(stage-out, claim timeout) run with local pilots on both databases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, col, select

from tests.cluster import SlurmCluster
from tests.integration.conftest import LiveTower, assert_done_exactly_once
from tests.integration.test_slurm import slurm_site
from tower.cli import main as tower_main
from tower.loops import health
from tower.model.models import Attempt, Job, Output, Pilot, RetryDecision, SiteHealth
from tower.model.states import JobState
from tower.retries import failures
from tower.retries.outcomes import Outcome

FLAKY = Path(__file__).with_name("flaky.py")
#: Policies of these tests: the shipped standard one without waits, and one that retries
#: a transient exit code 75 up to eight times.
POLICIES = {"quick": {"extends": "standard", "backoff": {"initial": 0, "max": 0}},
            "transient": {"extends": "quick", "payload_failures": 8, "rules": [
                {"name": "transient", "match": {"exit_codes": [75]}, "action": "retry",
                 "max_attempts": 8},
                {"name": "payload", "match": {"class": ["exit_code", "signal"]},
                 "action": "fail"}]}}
RETRY = {"policy": "quick", "policies": POLICIES}


def flaky_production(directory: Path, name: str = "flaky", jobs: int = 10,
                     fail_share: float = 0.0, exit_code: int = 75, sleep: float = 0.0,
                     **extra: Any) -> Path:
    request = {
        "name": name, "software": "flaky 1", "events_total": jobs, "events_per_job": 1,
        "walltime": "2m", "outputs": ["out_*.txt"],
        "command": ["${python}", str(FLAKY), "--index", "${index}", "--attempt", "${attempt}",
                    "--fail-share", str(fail_share), "--exit-code", str(exit_code),
                    "--sleep", str(sleep), "--output-dir", "${output_dir}"],
        **extra,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def attempts_by_job(tower: LiveTower) -> dict[int, list[Attempt]]:
    with Session(tower.runtime.engine) as session:
        rows = session.exec(select(Attempt).order_by(col(Attempt.job_id),
                                                     col(Attempt.number))).all()
    result: dict[int, list[Attempt]] = {}
    for attempt in rows:
        result.setdefault(attempt.job_id, []).append(attempt)
    return result


def outputs_waiting(tower: LiveTower) -> int:
    with Session(tower.runtime.engine) as session:
        return len(session.exec(select(Output).where(col(Output.staged).is_(False))).all())


def decisions(tower: LiveTower) -> list[RetryDecision]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(RetryDecision).order_by(col(RetryDecision.id))).all())


def run_cli(tower: LiveTower, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """`tower ARGV --json` in this process; returns its parsed output."""
    capsys.readouterr()
    code = tower_main(["--config", str(tower.home / "tower.yaml"), *argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
def on_slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster


# -- the issue's scenarios, on SLURM -------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.rabbitmq
@pytest.mark.one_database
def test_a_transient_exit_code_is_retried_until_every_job_is_done(
        amqp_url: str, on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(site=slurm_site(), broker=amqp_url,
                       retry={"policy": "transient", "policies": POLICIES})
    tower.submit(flaky_production(tmp_path, jobs=20, fail_share=0.4))
    tower.drive(tower.all_ended, timeout=240, pause=0.3)

    assert_done_exactly_once(tower.runtime.engine, jobs=20)
    tries = attempts_by_job(tower)
    outcomes = Counter(a.outcome for rows in tries.values() for a in rows)
    # about 40% of attempts failed, and no job went past the rule's eight
    assert outcomes[Outcome.EXIT_CODE] >= 5 and outcomes[Outcome.SUCCESS] == 20
    assert max(len(rows) for rows in tries.values()) <= 8
    assert all(a.exit_code == 75 for rows in tries.values() for a in rows
               if a.outcome == Outcome.EXIT_CODE)
    # the failure report counts what the attempts table holds
    report = run_cli(tower, capsys, "failures", "flaky")
    assert report["failed_attempts"] == outcomes[Outcome.EXIT_CODE]
    assert report["attempts"] == sum(outcomes.values())
    [group] = report["groups"]
    assert (group["class"], group["exit_code"], group["site"], group["attempts"]) == (
        "exit_code", 75, "local", outcomes[Outcome.EXIT_CODE])
    assert group["decisions"] == {"retry": outcomes[Outcome.EXIT_CODE]}
    assert "fails on purpose" in group["sample"]["log_tail"]


@pytest.mark.slurm
@pytest.mark.one_database
def test_a_permanent_error_fails_after_the_policys_tries_and_no_more(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(site=slurm_site(), retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=4, fail_share=1.0, exit_code=2))
    tower.drive(tower.all_ended, timeout=180, pause=0.3)

    tries = attempts_by_job(tower)
    assert len(tries) == 4
    # the standard policy: the payload's own error, three tries
    assert all([a.outcome for a in rows] == [Outcome.EXIT_CODE] * 3 for rows in tries.values())
    assert [(d.rule, d.action) for d in decisions(tower)].count(("payload", "fail")) == 4
    assert tower.counts() == {"failed": 4}
    # nothing retries them any more
    tower.cycles(3)
    assert sum(len(rows) for rows in attempts_by_job(tower).values()) == 12
    # `tower why` tells which rule failed the job
    job_id = next(iter(tries))
    explained = run_cli(tower, capsys, "why", str(job_id))
    assert explained["state"] == "failed"
    assert "rule 'payload' of policy quick after attempt 3" in explained["why"][0]
    # replayed through `strict`, each job's first decision would have been to hold it
    simulated = run_cli(tower, capsys, "policy", "simulate", "strict", "--production", "flaky")
    assert simulated["different"] == 4 and simulated["changes"] == [
        {"class": "exit_code", "recorded": "retry", "simulated": "hold", "count": 4}]


@pytest.mark.slurm
@pytest.mark.one_database
def test_a_payload_past_its_walltime_is_retried_with_a_longer_one(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=slurm_site(), retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=1, sleep=3, walltime="2s"))
    tower.drive(tower.all_ended, timeout=180, pause=0.3)

    [rows] = attempts_by_job(tower).values()
    assert [a.outcome for a in rows] == [Outcome.WALLTIME, Outcome.SUCCESS]
    [decision] = decisions(tower)
    assert (decision.rule, decision.action) == ("walltime", "retry")
    with Session(tower.runtime.engine) as session:
        [job] = session.exec(select(Job)).all()
    assert job.state == JobState.DONE and job.walltime == 4


@pytest.mark.slurm
@pytest.mark.one_database
def test_a_pilot_killed_without_a_word_loses_its_job_after_the_heartbeat_timeout(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # the site wraps its pilot: when the pilot dies, the batch job lives on, so only the
    # silent heartbeat tells
    wrapper = ["sh", "-c", f'{sys.executable} -m pilots.main "$@"; sleep 300', "wrapper"]
    tower = live_tower(site=slurm_site(pilot_command=wrapper, pilot={
        "slots": 1, "cores": 1, "walltime": "10m", "drain_margin": 5, "idle_timeout": 4}),
        retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=2, sleep=6))
    victim = tower.running_attempt(timeout=120)
    # the pilot's own process, not the wrapping shell whose command line names it too
    found = subprocess.run(["pgrep", "-f", f"^{sys.executable} -m pilots.main .*"
                            f"--pilot-id {victim.pilot_id}"],
                           capture_output=True, text=True, check=True).stdout.split()
    for pid in found:
        os.kill(int(pid), signal.SIGKILL)
    tower.drive(tower.all_ended, timeout=180, pause=0.3)

    tries = attempts_by_job(tower)[victim.job_id]
    assert [a.outcome for a in tries] == [Outcome.LOST_HEARTBEAT, Outcome.SUCCESS]
    assert "no heartbeat" in (tries[0].reason or "")
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, victim.pilot_id)
    # its batch job lived on: the silence told, and the tower cancelled what was left
    assert pilot is not None and pilot.state == "lost" and "no heartbeat" in (pilot.message
                                                                             or "")
    assert_done_exactly_once(tower.runtime.engine, jobs=2)


@pytest.mark.slurm
@pytest.mark.one_database
def test_a_site_that_fails_every_job_cools_down_and_the_other_site_finishes(
        on_slurm: SlurmCluster, live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the broken site's pilots die six seconds in, whatever they run
    killer = ["sh", "-c", f'{sys.executable} -m pilots.main "$@" & p=$!; sleep 6; '
              'kill -9 $p; exit 1', "killer"]
    # the good site's pilots start late, so the broken site surely gets work first
    late = ["sh", "-c", f'sleep 8; exec {sys.executable} -m pilots.main "$@"', "late"]
    small = {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5, "idle_timeout": 4}
    tower = live_tower(site=slurm_site(pilot_command=killer, pilot=small),
                       more_sites={"good": slurm_site(pilot_command=late, pilot=small)},
                       health={"window": "10m", "min_attempts": 2, "threshold": 0.5,
                               "cooldown": "10m"},
                       retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=8, sleep=8))
    tower.drive(tower.all_ended, timeout=240, pause=0.3)

    assert_done_exactly_once(tower.runtime.engine, jobs=8)
    with Session(tower.runtime.engine) as session:
        record = session.get(SiteHealth, "local")
        assert record is not None and "failed at the site (pilot_vanished" in record.reason
        assert set(health.cooling(session)) == {"local"}
        broken = session.exec(select(Attempt).where(Attempt.site == "local")).all()
        done_at = {a.site for a in session.exec(select(Attempt).where(
            Attempt.outcome == Outcome.SUCCESS)).all()}
    assert len(broken) >= 2 and {a.outcome for a in broken} == {Outcome.PILOT_VANISHED}
    # no attempt started at the broken site once it cooled down, and all succeeded elsewhere
    assert all(a.started_at <= record.since for a in broken)
    assert done_at == {"good"}
    sites = run_cli(tower, capsys, "sites")["sites"]
    local = next(row for row in sites if row["site"] == "local")
    assert local["cooling_until"] and "failed at the site" in local["cooling_reason"]


# -- the tower's own classes and the manager's commands, with local pilots ------------------

def test_held_jobs_are_listed_released_and_then_run(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(retry={"policy": "strict", "policies": POLICIES})
    # the first attempt of each job fails; strict holds it for a human
    tower.submit(flaky_production(tmp_path, jobs=3, fail_share=1.0, exit_code=4))
    tower.drive(lambda: tower.counts() == {"held": 3}, timeout=60)

    held = run_cli(tower, capsys, "held", "flaky")["held"]
    assert len(held) == 3 and all(row["held_by"] == "rule 'payload' of policy strict"
                                  for row in held)
    assert all("exit code 4" in row["reason"] for row in held)
    job_id = held[0]["id"]
    assert "tower release" in run_cli(tower, capsys, "why", str(job_id))["why"][0]
    released = run_cli(tower, capsys, "release", "--production", "flaky")
    assert sorted(released["released"]) == sorted(row["id"] for row in held)
    # released, they run again and are held again: the payload still fails
    tower.drive(lambda: tower.counts() == {"held": 3}, timeout=60)
    assert all(len(rows) == 2 for rows in attempts_by_job(tower).values())
    people = [d for d in decisions(tower) if d.actor != "policy"]
    assert len(people) == 3 and {d.action for d in people} == {"release"}


def test_retry_in_bulk_picks_failed_jobs_by_exit_code_with_a_fresh_budget(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, name="two", jobs=2, fail_share=1.0, exit_code=2))
    tower.submit(flaky_production(tmp_path, name="five", jobs=2, fail_share=1.0, exit_code=5,
                                  retry={"max_attempts": 1}))
    tower.drive(tower.all_ended, timeout=90)
    assert tower.counts() == {"failed": 4}

    dry = run_cli(tower, capsys, "retry", "two", "--exit-code", "5", "--dry-run")
    assert dry["count"] == 0
    retried = run_cli(tower, capsys, "retry", "five", "--exit-code", "5", "--class", "exit_code")
    assert retried["count"] == 2
    tower.drive(tower.all_ended, timeout=90)
    tries = attempts_by_job(tower)
    with Session(tower.runtime.engine) as session:
        five = {job.id for job in session.exec(select(Job).where(Job.production_id == 2))}
    # the production's own cap of one attempt applies afresh after the retry
    assert sorted(len(rows) for job_id, rows in tries.items() if job_id in five) == [2, 2]
    assert sorted(len(rows) for job_id, rows in tries.items() if job_id not in five) == [3, 3]


def test_an_output_gone_from_the_site_is_a_stageout_failure_and_is_retried(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=1))
    # run without the stager until the output waits at the site, then lose it there
    tower.drive(lambda: outputs_waiting(tower) == 1, timeout=60, without=("stager",))
    with Session(tower.runtime.engine) as session:
        output = session.exec(select(Output)).one()
    Path(output.source).unlink()
    tower.drive(tower.all_ended, timeout=90)

    [rows] = attempts_by_job(tower).values()
    assert [a.outcome for a in rows] == [Outcome.STAGEOUT, Outcome.SUCCESS]
    assert "No such file" in (rows[0].reason or "")
    assert [(d.rule, d.action) for d in decisions(tower)] == [("stage-out", "retry")]
    assert_done_exactly_once(tower.runtime.engine, jobs=1)


@pytest.mark.one_database
def test_jobs_no_pilot_claims_time_out_and_go_to_another_site(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # the dead site's pilots never start; its queued jobs wait for nobody
    tower = live_tower(site={"pilot_command": ["false"]},
                       more_sites={"alive": {"pilot_command": ["pilot"]}},
                       monitor={"heartbeat_interval": 1, "heartbeat_timeout": 4,
                                "claim_timeout": 5},
                       retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=4, sites=["local", "alive"]))
    tower.drive(tower.all_ended, timeout=120)

    assert_done_exactly_once(tower.runtime.engine, jobs=4)
    tries = attempts_by_job(tower)
    timed_out = [a for rows in tries.values() for a in rows
                 if a.outcome == Outcome.CLAIM_TIMEOUT]
    assert timed_out and all(a.site == "local" and a.pilot_id is None for a in timed_out)
    assert {a.site for rows in tries.values() for a in rows
            if a.outcome == Outcome.SUCCESS} == {"alive"}
    rules = {(d.outcome, d.rule, d.action) for d in decisions(tower)}
    assert rules == {("claim_timeout", "broken-site", "retry_elsewhere")}


@pytest.mark.one_database
def test_a_late_report_from_a_lost_attempt_is_refused_and_changes_nothing(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    import requests

    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=1, sleep=8))
    victim = tower.signal_running_pilot(signal.SIGSTOP)
    try:
        tower.drive(lambda: len(attempts_by_job(tower).get(victim.job_id, [])) >= 2,
                    timeout=60)
        before = attempts_by_job(tower)[victim.job_id][0]
        assert before.outcome == Outcome.LOST_HEARTBEAT
        late = requests.post(f"{tower.runtime.config.api_url}/api/v1/pilots/"
                             f"{victim.pilot_id}/report", timeout=10, json={"reports": [{
                                 "job": victim.job_id, "attempt": victim.number,
                                 "ending": "finished", "exit_code": 0}]})
        after = attempts_by_job(tower)[victim.job_id][0]
    finally:
        with Session(tower.runtime.engine) as session:
            pilot = session.get(Pilot, victim.pilot_id)
        assert pilot is not None and pilot.batch_id
        os.kill(int(pilot.batch_id), signal.SIGCONT)
    assert late.status_code == 409 or not late.json()["verdicts"][0]["accepted"]
    assert (after.outcome, after.ended_at) == (before.outcome, before.ended_at)


def test_failure_report_groups_by_class_code_and_site(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=3, fail_share=1.0, exit_code=9))
    tower.drive(tower.all_ended, timeout=90)
    with Session(tower.runtime.engine) as session:
        from tower.management import productions

        report = failures.report(session, productions.get(session, "flaky"))
    [group] = report["groups"]
    assert (group["attempts"], group["exit_code"], group["blame"]) == (9, 9, "payload")
    assert group["decisions"] == {"retry": 6, "fail": 3}


def test_why_tells_what_a_waiting_job_waits_for(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import timedelta

    from catalog.timeutil import utcnow
    from tower.loops import matchmaker
    from tower.model.db import transaction

    tower = live_tower(more_sites={"other": {"enabled": False}})
    tower.submit(flaky_production(tmp_path, jobs=1))
    with transaction(tower.runtime.engine) as session:
        session.add(SiteHealth(site="local", cooldown_until=utcnow() + timedelta(minutes=5),
                               reason="4 of the 5 attempts failed at the site (node_failure 4)"))
    # nothing is matched to a cooling site, and `why` says so, site by site
    assert matchmaker.run_once(tower.runtime) == 0
    explained = run_cli(tower, capsys, "why", "1")
    assert explained["state"] == "defined"
    lines = " ".join(explained["why"])
    assert "Site local is out of brokering until" in lines and "node_failure 4" in lines
    assert "Site other is disabled" in lines
    sites = {row["site"]: row for row in run_cli(tower, capsys, "sites")["sites"]}
    assert sites["local"]["cooling_reason"].startswith("4 of the 5")
    assert sites["other"]["cooling_until"] is None
