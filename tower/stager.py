"""The stager loop: copy outputs from site storage to their destinations, verify, catalog.

Outside the job: pilots never wait on transfers. A copy counts only once the
size and adler32 read back from the destination match what the pilot
measured. A destination that is down holds the outputs at the site, retried
with a growing delay; the job stays `staging` meanwhile and fails nothing.

An output that is gone from the site, or differs there from what the pilot
measured, cannot be staged by waiting: the attempt becomes a stage-out
failure and goes to the retry policy. An output whose name another job of
the dataset registered already is a fault of the production: the job is
held for its manager.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from catalog import files
from pilots.checksums import adler32_file
from tower import retry
from tower.db import transaction
from tower.errors import Conflict, GridtowerError, SourceError, TransferError
from tower.models import Job, Output, Production
from tower.runtime import Runtime
from tower.states import JobState, move_jobs
from tower.timeutil import later, utcnow

log = logging.getLogger(__name__)

#: Outputs one cycle leases at most.
BATCH = 200
#: A lease outlives a slow copy; after it, another tower process may take the output.
LEASE_SECONDS = 900


def run_once(runtime: Runtime) -> int:
    """One cycle; returns the number of outputs staged and cataloged."""
    staged = 0
    for output in _lease(runtime):
        try:
            _stage(runtime, output)
            staged += 1
        except SourceError as exc:
            _fail(runtime, output, str(exc))
        except Conflict as exc:
            _hold(runtime, output, str(exc))
        except GridtowerError as exc:
            _postpone(runtime, output, exc)
    return staged


def _lease(runtime: Runtime) -> list[Output]:
    now = utcnow()
    with transaction(runtime.engine) as session:
        ids = session.exec(
            select(Output.id).where(
                col(Output.staged).is_(False),
                or_(col(Output.next_try_at).is_(None), col(Output.next_try_at) <= now),
                or_(col(Output.lease_until).is_(None), col(Output.lease_until) < now))
            .order_by(col(Output.id)).limit(BATCH).with_for_update(skip_locked=True)).all()
        if not ids:
            return []
        session.execute(update(Output).where(col(Output.id).in_(ids)).values(
            lease_until=later(LEASE_SECONDS), lease_owner=runtime.instance)
            .execution_options(synchronize_session=False))
        return list(session.exec(select(Output).where(col(Output.id).in_(ids))).all())


def _stage(runtime: Runtime, output: Output) -> None:
    with Session(runtime.engine) as session:
        job = session.get(Job, output.job_id)
        assert job is not None
        production = session.get(Production, job.production_id)
        assert production is not None
    dataset = production.dataset
    replicas: dict[str, str] = {}
    for destination in production.spec.get("destinations", []):
        transfer = runtime.transfer(destination)
        path = f"{dataset}/{output.name}"
        info = transfer.stat(path)
        if info is None or (info.size, info.adler32) != (output.size, output.adler32):
            info = transfer.put(output.source, path)
        if (info.size, info.adler32) != (output.size, output.adler32):
            _check_source(output)
            raise TransferError(
                f"{destination}:{path}: copy differs from the source (size {info.size} "
                f"adler32 {info.adler32}, expected {output.size} {output.adler32})")
        replicas[destination] = transfer.url(path)
    _register(runtime, output, job, production, replicas)
    log.info("job=%s staged %s to %s", job.id, output.name, ", ".join(replicas) or "nowhere")


def _register(runtime: Runtime, output: Output, job: Job, production: Production,
              replicas: dict[str, str]) -> None:
    with transaction(runtime.engine) as session:
        entry = files.register(session, production.dataset, output.name, output.size,
                               output.adler32, job.id, output.attempt,  # type: ignore[arg-type]
                               _metadata(job, production))
        for destination, url in replicas.items():
            files.add_replica(session, entry, destination, url)
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            staged=True, lease_until=None, last_error=None)
            .execution_options(synchronize_session=False))
        waiting = session.exec(select(Output.id).where(
            Output.job_id == job.id, Output.attempt == output.attempt,
            col(Output.staged).is_(False))).first()
        if waiting is None:
            move_jobs(session, [job.id], JobState.STAGING, JobState.DONE,  # type: ignore[list-item]
                      "outputs staged and cataloged")


def _metadata(job: Job, production: Production) -> dict[str, Any]:
    spec = production.spec
    return {"production": production.name, "software": spec.get("software"),
            "parameters": spec.get("parameters", {}), "template_hash": production.template_hash,
            "index": job.index, "seed": job.seed, "first_event": job.first_event,
            "events": job.events}


def _check_source(output: Output) -> None:
    """Raise SourceError if the file at the site is not what the pilot measured."""
    try:
        found = (os.stat(output.source).st_size, adler32_file(Path(output.source)))
    except OSError as exc:
        raise SourceError(f"{output.source}: {exc.strerror or exc}") from exc
    if found != (output.size, output.adler32):
        raise SourceError(f"{output.source} at the site is {found[0]} bytes, adler32 "
                          f"{found[1]}; the pilot reported {output.size}, {output.adler32}")


def _fail(runtime: Runtime, output: Output, reason: str) -> None:
    """The attempt's outputs cannot be staged: the policy decides what follows."""
    log.warning("job=%s output=%s cannot be staged out: %s", output.job_id, output.name, reason)
    with transaction(runtime.engine) as session:
        session.execute(delete(Output).where(
            col(Output.job_id) == output.job_id, col(Output.attempt) == output.attempt,
            col(Output.staged).is_(False)))
        retry.fail_stageout(session, runtime.config, output.job_id, output.attempt,
                            f"stage-out of {output.name}: {reason}")


def _hold(runtime: Runtime, output: Output, reason: str) -> None:
    log.warning("job=%s output=%s held: %s", output.job_id, output.name, reason)
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            lease_until=None, last_error=reason[:500]).execution_options(
            synchronize_session=False))
        moved = move_jobs(session, [output.job_id], JobState.STAGING, JobState.HELD,
                          reason, message=reason)
        retry.record_action(session, moved, "stager", "hold", reason)


def _postpone(runtime: Runtime, output: Output, error: Exception) -> None:
    delay = min(runtime.config.storage.retry_delay * 2 ** output.tries, 3600)
    log.warning("job=%s output=%s held at the site, retry in %ss: %s",
                output.job_id, output.name, delay, error)
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            tries=Output.tries + 1, next_try_at=later(delay), lease_until=None,
            last_error=str(error)[:500]).execution_options(synchronize_session=False))

