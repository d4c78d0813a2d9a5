"""Real pilot processes: SIGTERM, draining before walltime, a payload past its walltime."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower, toy_production
from tower.model.models import Attempt, Job, Pilot
from tower.model.states import JobState, PilotState
from tower.retries.outcomes import Outcome

# what a pilot does does not depend on the tower's database
pytestmark = pytest.mark.one_database

ONE_SLOT = {"pilot": {"slots": 1, "walltime": "10m", "idle_timeout": 3},
            "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}}


def ended_attempts(tower: LiveTower) -> list[Attempt]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Attempt).where(col(Attempt.ended_at).is_not(None))))


def test_sigterm_kills_the_payload_and_reports_it(live_tower: Callable[..., LiveTower],
                                                  tmp_path: Path) -> None:
    tower = live_tower(site=ONE_SLOT)
    tower.submit(toy_production(tmp_path, jobs=1, events=300, sleep=0.1))
    attempt = tower.signal_running_pilot(signal.SIGTERM)

    tower.drive(lambda: bool(ended_attempts(tower)), timeout=60)
    [ended] = ended_attempts(tower)
    assert ended.outcome == Outcome.PILOT_KILLED and ended.signal == signal.SIGTERM
    assert "SIGTERM" in (ended.reason or "")
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, attempt.pilot_id)
        assert pilot is not None and pilot.state is PilotState.DONE and pilot.message == "SIGTERM"
        job = session.get(Job, attempt.job_id)
        assert job is not None and job.state in (JobState.DEFINED, JobState.ASSIGNED,
                                                 JobState.QUEUED, JobState.RUNNING)
    # the payload's process group is gone with it
    work_dir = Path(tower.runtime.config.sites["local"].scratch) / attempt.pilot_id
    assert not any(f"{work_dir}".encode() in _cmdline(pid) for pid in _pids())


def test_a_pilot_drains_when_its_walltime_is_too_short(live_tower: Callable[..., LiveTower],
                                                       tmp_path: Path) -> None:
    # a pilot of 60 s takes a first job of 50 s (50 + the drain margin fits); once that ran
    # for 6 s, what is left is too short for the next one
    short = {**ONE_SLOT, "pilot": {**ONE_SLOT["pilot"], "walltime": "60s", "drain_margin": 5}}
    tower = live_tower(site=short)
    tower.submit(toy_production(tmp_path, jobs=2, events=60, sleep=0.1, walltime="50s"))

    def a_pilot_drained() -> bool:
        with Session(tower.runtime.engine) as session:
            return session.exec(select(Pilot).where(Pilot.state == PilotState.DONE)).first() \
                is not None

    tower.drive(a_pilot_drained, timeout=60)
    with Session(tower.runtime.engine) as session:
        pilot = session.exec(select(Pilot).where(Pilot.state == PilotState.DONE)).first()
        assert pilot is not None and "too short for the next job" in (pilot.message or "")
        # it ran the first job only, to its end; the second went back for another pilot
        [ran] = session.exec(select(Attempt).where(Attempt.pilot_id == pilot.id)).all()
        assert ran.outcome == Outcome.SUCCESS


def test_a_payload_past_its_walltime_is_killed(live_tower: Callable[..., LiveTower],
                                               tmp_path: Path) -> None:
    tower = live_tower(site=ONE_SLOT)
    tower.submit(toy_production(tmp_path, jobs=1, events=200, sleep=0.1, walltime="2s",
                                retry={"max_attempts": 1}))
    tower.drive(tower.all_ended, timeout=60)
    [ended] = ended_attempts(tower)
    assert ended.outcome == Outcome.WALLTIME
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(Job)).one().state is JobState.FAILED


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def overlapping_claims(tower: LiveTower) -> int:
    """Attempts claimed while the same pilot's previous attempt still ran."""
    with Session(tower.runtime.engine) as session:
        attempts = sorted(session.exec(select(Attempt)).all(), key=lambda a: a.started_at)
    return sum(1 for earlier, later in zip(attempts, attempts[1:], strict=False)
               if later.pilot_id == earlier.pilot_id and earlier.ended_at is not None
               and later.started_at < earlier.ended_at)


@pytest.mark.parametrize(("sleep", "ahead"), [(0.0, True), (0.3, False)])
def test_a_pilot_claims_ahead_only_while_its_payloads_are_short(
        live_tower: Callable[..., LiveTower], tmp_path: Path, sleep: float,
        ahead: bool) -> None:
    # one slot; jobs of a tenth of a second, or of 1.2 s (4 events x 0.3 s): past SHORT
    tower = live_tower(site=ONE_SLOT)
    tower.submit(toy_production(tmp_path, jobs=12 if ahead else 6, events=4, sleep=sleep))
    tower.drive(tower.all_ended, timeout=120, pause=0.05)
    # short payloads: the next job is claimed while one runs, so a freed slot starts it
    # at once; long ones: never more claimed than the slot can run
    assert (overlapping_claims(tower) > 0) is ahead
    with Session(tower.runtime.engine) as session:
        assert {a.outcome for a in session.exec(select(Attempt)).all()} == {Outcome.SUCCESS}
