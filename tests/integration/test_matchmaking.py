"""Where the matchmaker puts work: one full site does not starve the others (issue 18
item 10), and a site's backlog follows its bound when its pilots vanish (item 8)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from tests.conftest import write_home
from tests.integration.conftest import LiveTower, submit, toy_production
from tower.config import load_config
from tower.loops import daemon, matchmaker, site_status
from tower.management import productions
from tower.model.models import Job, Pilot
from tower.model.states import JobState, PilotState
from tower.runtime import Runtime


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    opened = Runtime.open(load_config(write_home(
        tmp_path / "home", database_url, more_sites={"other": {}})))
    yield opened
    opened.close()


def test_jobs_pinned_to_a_full_site_leave_another_site_its_work(runtime: Runtime,
                                                                tmp_path: Path) -> None:
    # Given high-priority jobs that only site local may run, and low-priority ones any may
    submit(runtime, toy_production(tmp_path, name="pinned", jobs=20, priority=10,
                                   sites=["local"]))
    submit(runtime, toy_production(tmp_path, name="anywhere", jobs=4, priority=0))
    # When the matchmaker runs once (each site's backlog has room for 2)
    matchmaker.run_once(runtime)
    # Then local takes the pinned jobs and the other site gets work in the same cycle
    with Session(runtime.engine) as session:
        placed = Counter((production, site) for production, site in session.exec(
            select(Job.production_id, Job.site).where(col(Job.site).is_not(None))).all())
        pinned = productions.get(session, "pinned").id
        anywhere = productions.get(session, "anywhere").id
    assert placed == {(pinned, "local"): 2, (anywhere, "other"): 2}


def backlog_and_bound(tower: LiveTower) -> tuple[int, int]:
    rows, _ = site_status.site_queues(tower.runtime)
    [row] = [row for row in rows if row["site"] == "local"]
    return row["backlog"], row["bound"]


def test_the_backlog_follows_its_bound_when_the_pilots_vanish(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # Given two pilots of two slots running long payloads, and a full backlog (2 per slot)
    tower = live_tower(loops={"interval": 0, "republish_after": 2})
    tower.submit(toy_production(tmp_path, jobs=14, events=100, sleep=0.1))
    tower.drive(lambda: backlog_and_bound(tower) == (8, 8), timeout=60)
    with Session(tower.runtime.engine) as session:
        running = session.exec(select(Pilot).where(Pilot.state == PilotState.RUNNING)).all()
    # When both pilots are killed, and the monitor finds them gone (no new pilot comes)
    for pilot in running:
        assert pilot.batch_id
        os.kill(int(pilot.batch_id), signal.SIGKILL)

    def pilots_gone() -> bool:
        with Session(tower.runtime.engine) as session:
            return not session.exec(select(Pilot).where(
                col(Pilot.state).in_([PilotState.RUNNING, PilotState.DRAINING]))).all()

    tower.drive(pilots_gone, timeout=30, without=("factory",))
    # Then the jobs beyond the bound go back to matching: the backlog is within its bound
    tower.drive(lambda: backlog_and_bound(tower)[0] <= backlog_and_bound(tower)[1],
                timeout=20, without=("factory",))
    backlog, bound = backlog_and_bound(tower)
    assert bound == 2 and backlog == 2
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(Job).where(Job.state == JobState.DEFINED)).all()
    # and the messages of the jobs taken back are gone from the queue
    assert tower.runtime.broker.depth("local.default") == 2
    daemon.stop_pilots(tower.runtime)
