"""`tower db prune`: a finished production's history is coarsened, and what `tower show`,
the catalog, lineage and `tower why` read stays as it was."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from catalog import lineage
from catalog.models import CatalogFile
from catalog.queries import export
from catalog.timeutil import utcnow
from tests.integration.conftest import LiveTower, toy_production
from tests.integration.test_failures import run_cli
from tower.management import productions, why
from tower.model import tally
from tower.model.models import Activity, Job, JobEvent, Production
from tower.model.states import JobState


def seen(tower: LiveTower) -> dict[str, Any]:
    """What `tower show`, the catalog, lineage and `tower why` read of production `toy`."""
    with Session(tower.runtime.engine) as session:
        production = session.exec(select(Production).where(Production.name == "toy")).one()
        lfns = session.exec(select(CatalogFile.lfn).order_by(col(CatalogFile.lfn))).all()
        job_ids = session.exec(select(Job.id).order_by(col(Job.id))).all()
        explained = [why.explain(session, tower.runtime.config, job_id or 0)
                     for job_id in job_ids]
        return {"show": productions.describe(session, "toy"),
                "catalog": export(session, production.dataset),
                "lineage": [lineage.walk(session, lfn) for lfn in lfns],
                "why": [{**item, "history": item["history"][-1:]} for item in explained],
                "totals": activity_totals(session)}


def activity_totals(session: Session) -> list[Any]:
    return [tuple(row) for row in session.execute(
        select(col(Activity.site), col(Activity.kind), col(Activity.code),
               func.sum(Activity.count), func.sum(Activity.events))
        .group_by(col(Activity.site), col(Activity.kind), col(Activity.code))
        .order_by(col(Activity.kind), col(Activity.code))).all()]


def test_prune_coarsens_a_finished_production_and_keeps_what_is_read(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Given a production run to its end, its outputs cataloged
    tower = live_tower(retention={"finished_for": "7d"})
    tower.submit(toy_production(tmp_path, jobs=4))
    tower.drive(tower.all_ended, timeout=120)
    with Session(tower.runtime.engine) as session:
        tally.compact(session)
        session.commit()
    before = seen(tower)
    assert before["catalog"] and {item["state"] for item in before["why"]} == {"done"}

    # When it finished less than the retention ago: nothing to prune
    assert run_cli(tower, capsys, "db", "prune")["productions"] == []

    # When it finished longer ago than the retention
    with Session(tower.runtime.engine) as session:
        session.execute(update(Job).values(updated_at=utcnow() - timedelta(days=8)))
        session.commit()
        events = session.execute(select(func.count()).select_from(JobEvent)).scalar_one()
    dry = run_cli(tower, capsys, "db", "prune", "--dry-run")
    assert dry["productions"] == ["toy"] and dry["dry_run"] is True
    # four or five moves a job (assigned, [queued,] running, staging, done: a pilot may
    # claim before the broker's confirmation is recorded); all go but each job's last
    assert dry["job_events"] == events - 4 and events >= 4 * 4
    with Session(tower.runtime.engine) as session:  # a dry run changes nothing
        assert session.execute(select(func.count()).select_from(JobEvent)).scalar_one() == events
    done = run_cli(tower, capsys, "db", "prune")
    assert (done["job_events"], done["activity_rows"]) == (dry["job_events"],
                                                           dry["activity_rows"])

    # Then each job keeps its last event, and `tower show`, the catalog, lineage, `tower why`
    # and the activity's totals read as before
    with Session(tower.runtime.engine) as session:
        kept = session.exec(select(JobEvent)).all()
        assert sorted(event.job_id for event in kept) == sorted(
            session.exec(select(Job.id)).all())
        assert {event.to_state for event in kept} == {JobState.DONE}
        buckets = session.exec(select(Activity.bucket)).all()
        assert all(bucket % tally.COARSE == 0 for bucket in buckets)
    assert seen(tower) == before
    # and pruning again finds nothing more to remove
    again = run_cli(tower, capsys, "db", "prune")
    assert (again["job_events"], again["activity_rows"]) == (0, 0)
