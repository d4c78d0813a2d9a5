"""The factory on a real database: nothing for a disabled site or an empty backlog, and
every decision recorded with its numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from tests.conftest import write_home
from tests.integration.conftest import toy_production
from tower import factory, productions
from tower.config import load_config
from tower.db import transaction
from tower.models import FactoryDecision, Pilot
from tower.runtime import Runtime


@pytest.fixture
def make_runtime(tmp_path: Path, database_url: str) -> Iterator[Any]:
    opened: list[Runtime] = []

    def make(**site: Any) -> Runtime:
        runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url, site)))
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        runtime.close()


def submit(runtime: Runtime, directory: Path) -> None:
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, toy_production(directory, jobs=4),
                                     runtime.config):
            productions.create(session, item)


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
