"""A manager's control of productions through the CLI: pause, resume, cancel and extend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from catalog.models import CatalogFile
from tests.integration.conftest import LiveTower
from tests.integration.test_failures import RETRY, flaky_production
from tower.cli import main as tower_main
from tower.model.models import Job, Pilot


def cli(tower: LiveTower, capsys: pytest.CaptureFixture[str], *argv: str,
        expect: int = 0) -> Any:
    capsys.readouterr()
    code = tower_main(["--config", str(tower.home / "tower.yaml"), *argv, "--json"])
    out = capsys.readouterr().out
    assert code == expect, out
    return json.loads(out)


def test_pause_resume_then_extend_continues_the_streams_in_the_same_dataset(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=3))
    assert cli(tower, capsys, "pause", "flaky")["state"] == "paused"
    tower.cycles(5)
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(Pilot)).all() == []  # no work, no pilots
    assert tower.counts() == {"defined": 3}
    cli(tower, capsys, "pause", "flaky", expect=4)  # paused already

    assert cli(tower, capsys, "resume", "flaky")["state"] == "active"
    tower.drive(tower.all_ended, timeout=60)
    extended = cli(tower, capsys, "extend", "flaky", "--events", "5")
    assert (extended["events_total"], extended["jobs_added"]) == (5, 2)
    cli(tower, capsys, "extend", "flaky", "--events", "4", expect=2)  # not more
    tower.drive(tower.all_ended, timeout=60)

    with Session(tower.runtime.engine) as session:
        rows = session.exec(select(Job).order_by(col(Job.index))).all()
        files = session.exec(select(CatalogFile)).all()
    assert [(job.index, job.first_event, job.state) for job in rows] == [
        (index, index, "done") for index in range(5)]
    assert len({job.seed for job in rows}) == 5
    assert len(files) == 5 and len({entry.dataset_id for entry in files}) == 1


def test_cancel_ends_the_unfinished_jobs_and_cannot_be_undone(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=4, sleep=30))
    tower.running_attempt(timeout=60)
    cancelled = cli(tower, capsys, "cancel", "flaky")
    assert cancelled["jobs_cancelled"] == 4
    tower.drive(tower.all_ended, timeout=60)
    assert tower.counts() == {"cancelled": 4}
    cli(tower, capsys, "resume", "flaky", expect=4)
    cli(tower, capsys, "extend", "flaky", "--events", "9", expect=4)
