"""Stage-in: copy input files that a site's storage element lacks from another good
replica, before the matchmaker brokers the jobs that read them there (`tower.loops.placement`
asks for it). Both copies are checked against the catalog's size and adler32, and the
new replica is recorded; a failure is retried with a growing delay."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from catalog import files
from catalog.models import CatalogFile
from catalog.timeutil import later, utcnow
from tower.errors import GridtowerError, TransferError
from tower.loops import leftovers, placement
from tower.model.db import transaction
from tower.model.models import StageIn
from tower.runtime import Runtime
from transfer.paths import inside

log = logging.getLogger(__name__)

#: Requests one cycle takes at most.
BATCH = 200


def run_once(runtime: Runtime) -> int:
    """Copy requested input files to the storage elements that asked for them."""
    now = utcnow()
    with Session(runtime.engine) as session:
        requests = session.exec(select(StageIn).where(
            col(StageIn.done).is_(False),
            or_(col(StageIn.next_try_at).is_(None), col(StageIn.next_try_at) <= now))
            .limit(BATCH)).all()
    copied = 0
    for request in requests:
        try:
            _copy_in(runtime, request.lfn, request.destination)
            copied += 1
        except GridtowerError as exc:
            delay = min(runtime.config.storage.retry_delay * 2 ** request.tries, 3600)
            log.warning("stage-in of %s to %s failed, retry in %ss: %s", request.lfn,
                        request.destination, delay, exc)
            with transaction(runtime.engine) as session:
                session.execute(update(StageIn).where(
                    col(StageIn.lfn) == request.lfn,
                    col(StageIn.destination) == request.destination).values(
                    tries=StageIn.tries + 1, next_try_at=later(delay),
                    last_error=str(exc)[:500]))
    return copied


def _copy_in(runtime: Runtime, lfn: str, target: str) -> None:
    """Fetch a good replica of `lfn` from another destination, put it at `target`, verify
    both copies against the catalog, and record the new replica."""
    with Session(runtime.engine) as session:
        sources = [row for row in placement.replicas_of(session, lfn) if row[0] != target]
    if not sources:
        raise TransferError(f"{lfn}: no good replica to stage in from")
    problems = []
    for destination, path, size, adler32 in sources:
        with tempfile.TemporaryDirectory(prefix="gridtower-stage-in-") as scratch:
            local = str(inside(Path(scratch), Path(path).name, "stage-in scratch"))
            try:
                fetched = runtime.transfer(destination).get(path, local)
                if (fetched.size, fetched.adler32) != (size, adler32):
                    raise TransferError(f"{destination}:{path} differs from the catalog")
                try:
                    placed = runtime.transfer(target).put(local, path)
                finally:
                    leftovers.sweeper(runtime).copied(target, str(Path(path).parent))
                if (placed.size, placed.adler32) != (size, adler32):
                    raise TransferError(f"{target}:{path}: copy differs from the source")
            except GridtowerError as exc:
                problems.append(str(exc))
                continue
        with transaction(runtime.engine) as session:
            entry = session.exec(select(CatalogFile).where(CatalogFile.lfn == lfn)).one()
            files.add_replica(session, entry, target, runtime.transfer(target).url(path),
                              path=path)
            session.execute(update(StageIn).where(
                col(StageIn.lfn) == lfn, col(StageIn.destination) == target).values(
                done=True, last_error=None))
        log.info("staged in %s from %s to %s", lfn, destination, target)
        return
    raise TransferError("; ".join(problems))
