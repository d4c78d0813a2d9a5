"""The stager loop: copy outputs from site storage to their destinations, verify, catalog.

Outside the job: pilots never wait on transfers. A copy counts only once the
size and adler32 read back from the destination match what the pilot
measured; each destination's verified copy is recorded as it is made, so a
restart copies only what is missing, and a copy found differing (a partial
or altered file) is made again. The source is never removed before every
destination holds a verified copy, and then only if a destination asks for
it (`remove_source`). A destination that is down holds the outputs at the
site, retried with a growing delay, while the others go on; the job stays
`staging` meanwhile and fails nothing, and `tower status` shows what waits
for which destination.

When every copy is made, the production's post step (if any) validates the
output; then the file is cataloged with its replicas. A rejected output is
cataloged with its replicas marked bad, and the attempt goes to the retry
policy (class `validation`). An output gone from the site, or differing
there from what the pilot measured, cannot be staged by waiting: the attempt
becomes a stage-out failure for the policy. An output whose name another job
of the dataset registered already is a fault of the production: the job is
held for its manager.

Whatever ends a cycle, the outputs it leased are released at its end, so an error
of any kind (a database connection killed under it included) delays them by one
cycle, not by the lease. Partial files of copies a killed tower left, and files
at the site's storage that nothing holds any more, are swept (tower.loops.leftovers).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import col, select

from catalog import files, lineage
from catalog.timeutil import later, utcnow
from pilots.checksums import adler32_file
from tower.errors import Conflict, GridtowerError, SourceError, TransferError
from tower.logs import job_context
from tower.loops import leftovers, post, stagein
from tower.management import chains
from tower.management.specs import ProductionSpec
from tower.model.db import transaction
from tower.model.models import Job, Output, Production
from tower.model.states import JobState, move_jobs
from tower.retries import retry
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime
from transfer.paths import inside, plain_name

log = logging.getLogger(__name__)

#: Outputs one cycle leases at most.
BATCH = 200
#: Outputs staged at once.
PARALLEL = 8


def run_once(runtime: Runtime) -> int:
    """One cycle: input data staged in first, then outputs out; returns the number of
    outputs staged and cataloged. Outputs are staged in parallel (each destination
    bounds its own connections)."""
    stagein.run_once(runtime)
    sweeper = leftovers.sweeper(runtime)
    if sweeper.due():
        try:
            sweeper.sweep(runtime)
        except Exception:  # housekeeping: staging goes on; the next pass tries again
            log.exception("sweep of partial and unheld files failed")
    leased = _lease(runtime)
    if not leased:
        return 0
    ids = [output.id for output in leased]
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(runtime, ids, done),
                               name="stager-lease", daemon=True)
    renewer.start()
    try:
        jobs, specs = _jobs_of(runtime, leased)
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(leased)),
                                thread_name_prefix="stager") as pool:
            return sum(pool.map(lambda output: _guarded(runtime, output, *jobs[output.job_id],
                                                        specs), leased))
    finally:
        done.set()
        renewer.join()
        _release(runtime, ids)


def _release(runtime: Runtime, ids: list[int | None]) -> None:
    """Let go of what this cycle leased and did not finish, whatever ended it: in a
    session of its own, as the cycle's may have died with its connection."""
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(
            col(Output.id).in_(ids), col(Output.lease_owner) == runtime.instance,
            col(Output.lease_until).is_not(None)).values(lease_until=None)
            .execution_options(synchronize_session=False))


def _renew(runtime: Runtime, ids: list[int | None], done: threading.Event) -> None:
    """Keep this tower's leases alive while its copies run, however long they take."""
    lease = runtime.config.storage.lease
    while not done.wait(lease / 3):
        with transaction(runtime.engine) as session:
            session.execute(update(Output).where(
                col(Output.id).in_(ids), col(Output.lease_owner) == runtime.instance,
                col(Output.staged).is_(False)).values(lease_until=later(lease))
                .execution_options(synchronize_session=False))


def _guarded(runtime: Runtime, output: Output, job: Job, production: Production,
             specs: dict[int, ProductionSpec]) -> int:
    with job_context(production.name, job.id, output.attempt):
        return _settled(runtime, output, job, production, specs[job.production_id])


def _settled(runtime: Runtime, output: Output, job: Job, production: Production,
             spec: ProductionSpec) -> int:
    """Stage `output`, or settle why not; 1 if it was staged."""
    try:
        _stage(runtime, output, job, production, spec)
        return 1
    except SourceError as exc:
        _fail(runtime, output, Outcome.STAGEOUT, f"stage-out of {output.name!r}: {exc}")
    except files.StaleAttempt as exc:
        _drop(runtime, output, str(exc))
    except Conflict as exc:
        _hold(runtime, output, str(exc))
    except GridtowerError as exc:
        _postpone(runtime, output, exc)
    return 0


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
            lease_until=later(runtime.config.storage.lease), lease_owner=runtime.instance)
            .execution_options(synchronize_session=False))
        return list(session.exec(select(Output).where(col(Output.id).in_(ids))).all())


def _jobs_of(runtime: Runtime, outputs: list[Output]
             ) -> tuple[dict[int, tuple[Job, Production]], dict[int, ProductionSpec]]:
    """The jobs and productions of a batch of outputs, and each production's spec, read
    once for the batch rather than once per output."""
    with transaction(runtime.engine) as session:
        jobs = session.exec(select(Job).where(
            col(Job.id).in_({output.job_id for output in outputs}))).all()
        productions = {production.id: production for production in session.exec(
            select(Production).where(col(Production.id).in_(
                {job.production_id for job in jobs}))).all()}
    specs = {key: ProductionSpec.model_validate(production.spec)
             for key, production in productions.items() if key is not None}
    return {job.id: (job, productions[job.production_id]) for job in jobs
            if job.id is not None}, specs


def _stage(runtime: Runtime, output: Output, job: Job, production: Production,
           spec: ProductionSpec) -> None:
    """Copy to each destination still lacking a verified copy; once all hold one,
    validate, catalog, and let the source go if asked."""
    # reports are checked, but an output name is the pilot's string: proved plain again
    path = f"{production.dataset}/{plain_name(output.name, f'job {job.id} output')}"
    with _fetched(runtime, job.site, output) as local:
        _copy_all(runtime, output, spec.destinations, path, local)
        rejected = post.rejection(spec, job, output.attempt, local, output.name)
    replicas = {destination: (path, runtime.transfer(destination).url(path))
                for destination in spec.destinations}
    _register(runtime, output, job, production, replicas, rejected)
    if rejected:
        _fail(runtime, output, Outcome.VALIDATION, rejected)
        return
    if job.site and any(runtime.config.storage.destinations[name].remove_source
                        for name in spec.destinations):
        # every copy is verified by now
        runtime.site_storage(job.site).remove(_at_site(runtime, job.site, output))
    log.info("staged %r to %s", output.name,
             ", ".join(spec.destinations) or "nowhere")


def _at_site(runtime: Runtime, site: str, output: Output) -> str:
    """The output's path relative to its site's storage root."""
    root = PurePosixPath(runtime.config.sites[site].storage)
    try:
        return str(PurePosixPath(output.source).relative_to(root))
    except ValueError:
        raise SourceError(f"{output.source} is not under site {site}'s storage {root}") from None


@contextmanager
def _fetched(runtime: Runtime, site: str | None, output: Output) -> Iterator[Path]:
    """The output as a local file: read in place at a local site, fetched over SFTP (and
    checked against what the pilot measured) from a site reached by SSH."""
    if site is None:
        raise SourceError(f"{output.source}: the job has no site to read it from")
    relative = _at_site(runtime, site, output)
    if runtime.config.sites[site].ssh is None:
        # a link the payload made in its stage dir must not lead the tower out of storage
        yield inside(Path(runtime.config.sites[site].storage), relative, f"site {site}")
        return
    storage = runtime.site_storage(site)
    with tempfile.TemporaryDirectory(prefix="gridtower-stage-out-") as scratch:
        local = inside(Path(scratch), output.name, "stage-out scratch")
        try:
            info = storage.get(relative, str(local))
        except GridtowerError:
            if storage.stat(relative) is None:
                raise SourceError(f"{output.source}: no such file at site {site}") from None
            raise
        if (info.size, info.adler32) != (output.size, output.adler32):
            raise SourceError(f"{output.source} at site {site} is {info.size} bytes, adler32 "
                              f"{info.adler32}; the pilot reported {output.size}, "
                              f"{output.adler32}")
        yield local


def _copy_all(runtime: Runtime, output: Output, destinations: list[str], path: str,
              local: Path) -> None:
    """A verified copy at each destination still lacking one; a destination that is down
    does not stop the others. When one fails, the copies made are recorded (what waits
    for which destination); when all are made, the catalog's transaction records them.
    A tower killed between two copies loses no work: the next finds the verified copy at
    the destination (`_copy`) and does not make it again."""
    copied = list(output.copied or [])
    problems = []
    for destination in destinations:
        if destination in copied:
            continue
        try:
            _copy(runtime, output, destination, path, local)
        except SourceError:
            raise
        except GridtowerError as exc:
            problems.append(f"{destination}: {exc}")
            continue
        copied.append(destination)
    if problems:
        if len(copied) > len(output.copied or []):
            _note_copied(runtime, output, copied)
        raise TransferError("; ".join(problems))


def _copy(runtime: Runtime, output: Output, destination: str, path: str, local: Path) -> None:
    """A verified copy of the output at `destination`: what is there already counts if it
    matches; anything else is copied again. The source is checked when a copy differs."""
    transfer = runtime.transfer(destination)
    expected = (output.size, output.adler32)
    info = transfer.stat(path)
    if info is None or (info.size, info.adler32) != expected:
        try:
            info = transfer.put(str(local), path)
        finally:
            # a failed put may leave its temporary (a connection lost mid-copy)
            leftovers.sweeper(runtime).copied(destination, str(PurePosixPath(path).parent))
    if (info.size, info.adler32) != expected:
        _check_source(output, local)
        raise TransferError(f"{destination}:{path}: copy differs from the source (size "
                            f"{info.size} adler32 {info.adler32}, expected {output.size} "
                            f"{output.adler32})")


def _note_copied(runtime: Runtime, output: Output, copied: list[str]) -> None:
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            copied=list(copied)).execution_options(synchronize_session=False))


def _register(runtime: Runtime, output: Output, job: Job, production: Production,
              replicas: dict[str, tuple[str, str]], rejected: str | None) -> None:
    with transaction(runtime.engine) as session:
        # the job's row first: a job's outputs are staged in parallel, and without the lock
        # each of two last outputs sees the other unstaged and neither moves the job on
        session.exec(select(Job.id).where(Job.id == job.id).with_for_update()).one()
        entry = files.register(session, production.dataset, output.name, output.size,
                               output.adler32, job.id, output.attempt,  # type: ignore[arg-type]
                               _metadata(job, production))
        for destination, (path, url) in replicas.items():
            files.add_replica(session, entry, destination, url, path=path)
        lineage.record(session, entry, chains.parents_of(session, job, production))
        if rejected:
            files.mark_bad(session, entry, rejected)
            return
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            staged=True, copied=list(replicas), lease_until=None, last_error=None)
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


def _check_source(output: Output, local: Path) -> None:
    """Raise SourceError if the file at the site is not what the pilot measured."""
    try:
        found = (local.stat().st_size, adler32_file(local))
    except OSError as exc:
        raise SourceError(f"{output.source}: {exc.strerror or exc}") from exc
    if found != (output.size, output.adler32):
        raise SourceError(f"{output.source} at the site is {found[0]} bytes, adler32 "
                          f"{found[1]}; the pilot reported {output.size}, {output.adler32}")


def _fail(runtime: Runtime, output: Output, outcome: Outcome, reason: str) -> None:
    """The attempt's outputs cannot be used: the policy decides what follows."""
    log.warning("output=%r %s: %s", output.name, outcome, reason)
    leftovers.sweeper(runtime).dropped(output.job_id, output.attempt)
    with transaction(runtime.engine) as session:
        session.execute(delete(Output).where(
            col(Output.job_id) == output.job_id, col(Output.attempt) == output.attempt,
            col(Output.staged).is_(False)))
        retry.fail_after_success(session, runtime.config, output.job_id, output.attempt,
                                 outcome, reason)


def _drop(runtime: Runtime, output: Output, reason: str) -> None:
    """A newer attempt of the job is cataloged already: this older output is not wanted."""
    log.info("output=%r dropped: %s", output.name, reason)
    leftovers.sweeper(runtime).dropped(output.job_id, output.attempt)
    with transaction(runtime.engine) as session:
        session.execute(delete(Output).where(col(Output.id) == output.id))


def _hold(runtime: Runtime, output: Output, reason: str) -> None:
    log.warning("output=%r held: %s", output.name, reason)
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            lease_until=None, last_error=reason[:500]).execution_options(
            synchronize_session=False))
        moved = move_jobs(session, [output.job_id], JobState.STAGING, JobState.HELD,
                          reason, message=reason)
        retry.record_action(session, moved, "stager", "hold", reason)


def _postpone(runtime: Runtime, output: Output, error: Exception) -> None:
    delay = min(runtime.config.storage.retry_delay * 2 ** output.tries, 3600)
    log.warning("output=%r held at the site, retry in %ss: %s", output.name, delay, error)
    with transaction(runtime.engine) as session:
        session.execute(update(Output).where(col(Output.id) == output.id).values(
            tries=Output.tries + 1, next_try_at=later(delay), lease_until=None,
            last_error=str(error)[:500]).execution_options(synchronize_session=False))

