"""A tower away for longer than the heartbeat timeout does not blame its pilots for it
(issue 18 item 5): heartbeats count only while the tower's API was serving."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower, toy_production
from tower.model.models import Attempt, Job, Pilot
from tower.retries.outcomes import Outcome
from web.server import ApiServer


def free_port() -> int:
    # a fixed port, so the restarted API is where the pilot looks (and may reuse the
    # address: an ephemeral port is bound without SO_REUSEADDR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def restart_api(tower: LiveTower) -> None:
    """Serve the API again on the same address, as a restarted tower would."""
    tower.server = ApiServer(tower.runtime.config)
    tower.server.bind(tower.runtime)


def attempts(tower: LiveTower) -> list[Attempt]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Attempt).order_by(col(Attempt.id))).all())


def test_a_tower_away_longer_than_the_timeout_keeps_its_pilots(live_tower, tmp_path: Path
                                                                ) -> None:
    # Given a real pilot running a long payload (heartbeat timeout 6 s)
    tower = live_tower(api={"bind": "127.0.0.1", "port": free_port()})
    tower.submit(toy_production(tmp_path, jobs=1, events=400, sleep=0.1))
    first = tower.running_attempt()
    # When the whole tower (API and loops) is away for twice the heartbeat timeout
    tower.server.shutdown()
    time.sleep(12)
    restart_api(tower)
    # Then, driven for longer than the timeout after its return, it lost nothing
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tower.cycles(1)
    found = attempts(tower)
    assert [attempt.id for attempt in found] == [first.id], found
    assert found[0].ended_at is None, found[0]
    with Session(tower.runtime.engine) as session:
        job = session.get(Job, first.job_id)
        pilot = session.get(Pilot, first.pilot_id)
    assert job is not None and job.attempt == 1 and job.state == "running"
    assert pilot is not None and pilot.state == "running"
    # and a pilot really silent afterwards is still written off
    assert pilot.batch_id
    os.kill(int(pilot.batch_id), signal.SIGSTOP)
    try:
        tower.drive(lambda: attempts(tower)[0].ended_at is not None, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pilot.batch_id), signal.SIGCONT)
    assert attempts(tower)[0].outcome == Outcome.LOST_HEARTBEAT
