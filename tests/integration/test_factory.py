"""The factory on a real database: nothing for a disabled site or an empty backlog, and
every decision recorded with its numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from catalog.timeutil import ago
from tests.integration.conftest import submit as submit_file
from tests.integration.conftest import toy_production
from tower.loops import factory
from tower.model.db import transaction
from tower.model.models import FactoryDecision, Pilot, SiteQueue
from tower.model.states import PilotState
from tower.runtime import Runtime


@pytest.fixture
def make_runtime(make_runtime: Any) -> Any:
    return lambda **site: make_runtime(site=site)


def submit(runtime: Runtime, directory: Path) -> None:
    submit_file(runtime, toy_production(directory, jobs=4))


def test_a_disabled_site_gets_nothing(make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime(enabled=False)
    submit(runtime, tmp_path)
    assert factory.run_once(runtime) == 0
    with Session(runtime.engine) as session:
        assert session.exec(select(Pilot)).all() == []
        assert session.exec(select(FactoryDecision)).all() == []


def test_an_empty_backlog_gets_no_pilot_and_says_so(make_runtime: Any) -> None:
    runtime = make_runtime()
    assert factory.run_once(runtime) == 0
    with Session(runtime.engine) as session:
        assert session.exec(select(Pilot)).all() == []
        [decision] = session.exec(select(FactoryDecision)).all()
    assert decision.note == "pending 0/2, running 0/2, draining 0, backlog 0: submit 0"


def test_a_refused_submission_leaves_no_reservation_behind(make_runtime: Any,
                                                           tmp_path: Path) -> None:
    runtime = make_runtime(pilot_command=[str(tmp_path / "no-such-pilot")],
                           pilot={"slots": 1})
    submit(runtime, tmp_path)
    assert factory.run_once(runtime) == 0  # the error is recorded, the loop goes on
    with Session(runtime.engine) as session:
        pilots = session.exec(select(Pilot)).all()
        status = session.get(SiteQueue, ("local", "default"))
    assert [p.state for p in pilots] == [PilotState.LOST, PilotState.LOST]
    assert sorted(p.message or "" for p in pilots)[0].startswith("not submitted")
    assert status is not None and "cannot start pilot" in (status.last_error or "")


def test_after_a_refused_submission_the_factory_waits_error_pause(make_runtime: Any,
                                                                  tmp_path: Path) -> None:
    runtime = make_runtime(pilot_command=[str(tmp_path / "no-such-pilot")],
                           pilot={"slots": 1}, limits={"error_pause": "1h"})
    submit(runtime, tmp_path)
    factory.run_once(runtime)
    for _ in range(3):  # one try per pause, not one per cycle
        assert factory.run_once(runtime) == 0
    with Session(runtime.engine) as session:
        assert len(session.exec(select(Pilot)).all()) == 2
    # the same site queue, its sites.yaml rewritten without a pause
    unpaused = make_runtime(pilot_command=[str(tmp_path / "no-such-pilot")],
                            pilot={"slots": 1}, limits={"error_pause": 0})
    factory.run_once(unpaused)
    with Session(unpaused.engine) as session:
        assert len(session.exec(select(Pilot)).all()) == 4  # no pause: tried again


def test_a_reservation_a_dead_tower_left_is_forgotten(make_runtime: Any,
                                                      tmp_path: Path) -> None:
    runtime = make_runtime(limits={"max_queued": 1, "max_running": 1, "max_per_cycle": 1})
    with transaction(runtime.engine) as session:
        session.add(Pilot(id="orphan", site="local", submitted_at=ago(3600)))
    submit(runtime, tmp_path)
    assert factory.run_once(runtime) == 1  # the orphan no longer fills max_queued
    with Session(runtime.engine) as session:
        orphan = session.get(Pilot, "orphan")
    assert orphan is not None and orphan.state == PilotState.LOST


def test_a_site_sets_how_long_a_reservation_waits_before_it_is_forgotten(
        make_runtime: Any, tmp_path: Path) -> None:
    # a site whose submissions may take long (a slow CE, SSH) keeps a reservation 2h
    runtime = make_runtime(limits={"max_queued": 1, "max_running": 1, "max_per_cycle": 1,
                                   "unsubmitted_after": "2h"})
    with transaction(runtime.engine) as session:
        session.add(Pilot(id="submitting", site="local", submitted_at=ago(3600)))
    submit(runtime, tmp_path)
    assert factory.run_once(runtime) == 0  # another tower may still be submitting it
    with Session(runtime.engine) as session:
        reserved = session.get(Pilot, "submitting")
    assert reserved is not None and reserved.state == PilotState.SUBMITTED
