"""Attempts' full logs, as their pilots ship them: checked, kept, read back, and dropped
after `monitor.log_retention_days`.

A pilot is not trusted. It may send the log of an attempt it runs (or ran within
LATE_AFTER_END), once; the body is gzip and is bounded twice: as sent, and once
uncompressed (read with a bounded inflater, so a gzip bomb costs the tower no more than
its site's `log_bytes`). A small log is kept in the database; a bigger one in the
tower's log store (`monitor.logs_destination`, or a directory of the tower's home),
through the transfer seam, under a name the tower makes from the job and attempt numbers.
"""

from __future__ import annotations

import gzip
import logging
import tempfile
import zlib
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tower.errors import Conflict, GridtowerError, NotFound, SpecError, TransferError
from tower.loops.presence import aware
from tower.model.models import Attempt, AttemptLog
from tower.runtime import Runtime
from transfer.base import Transfer

#: A pilot may still send an attempt's log this long after the attempt ended (its
#: report may have reached the tower first).
LATE_AFTER_END = timedelta(hours=1)
#: Room beyond the site's `log_bytes`: the line saying where the log was cut.
MARKER_ROOM = 200
#: Logs dropped per call of `prune` at most (the next cycle drops the rest).
PRUNE_BATCH = 1000

log = logging.getLogger(__name__)


class LogTooLarge(GridtowerError):
    """The log is over its site's bound."""

    status = 413


#: The directory of the logs at a destination (`monitor.logs_destination`).
AT_DESTINATION = "attempt-logs"


def stored_name(runtime: Runtime, job_id: int, number: int) -> str:
    """Where the log goes, made by the tower alone: `DESTINATION:attempt-logs/NAME` at a
    destination, a bare name in the home's directory (see `_place`)."""
    name = f"{job_id}.{number}.log.gz"
    destination = runtime.config.monitor.logs_destination
    if destination is None:
        return name
    return f"{destination}:{AT_DESTINATION}/{name}"


def _place(runtime: Runtime, stored: str) -> tuple[Transfer, str]:
    """The store holding `stored`, and its path there: each log names its own, so those
    written before `logs_destination` changed are still read and pruned where they are.
    KeyError: a destination no longer configured."""
    # the path part is the tower's own and has no colon; a destination's name may
    destination, colon, path = stored.rpartition(":")
    if colon:
        return runtime.transfer(destination), path
    return runtime.log_directory(), stored


def accept(session: Session, runtime: Runtime, pilot_id: str, job_id: int, number: int,
           body: bytes, cut: int) -> AttemptLog:
    """Keep the log `body` (gzip) of attempt `number` of `job_id`, sent by `pilot_id`."""
    config = runtime.config
    attempt = session.exec(select(Attempt).where(
        col(Attempt.job_id) == job_id, col(Attempt.number) == number)).first()
    # another pilot's attempt is as absent as one that does not exist: nothing told
    if attempt is None or attempt.pilot_id != pilot_id:
        raise NotFound(f"pilot {pilot_id} ran no attempt {number} of job {job_id}",
                       field="attempt")
    if attempt.ended_at is not None and aware(attempt.ended_at) < utcnow() - LATE_AFTER_END:
        raise Conflict(f"attempt {number} of job {job_id} ended too long ago for its log",
                       field="attempt")
    site = config.sites.get(attempt.site)
    limit = site.pilot.log_bytes if site is not None else 0
    if limit == 0:
        raise Conflict(f"site {attempt.site} ships no logs (log_bytes: 0)", field="site")
    # gzip of incompressible bytes is a little longer than they are
    if len(body) > limit + limit // 100 + MARKER_ROOM + 1024:
        raise LogTooLarge(f"the log is {len(body)} bytes gzipped, over site "
                          f"{attempt.site}'s log_bytes of {limit}", field="log")
    size = _inflated_size(body, limit + MARKER_ROOM, attempt.site)
    entry = AttemptLog(job_id=job_id, attempt=number, size=size, compressed=len(body),
                       truncated=cut > 0)
    small = len(body) <= config.monitor.logs_in_database
    if small:
        entry.data = body
    else:
        entry.stored = stored_name(runtime, job_id, number)
    session.add(entry)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"attempt {number} of job {job_id} has its log already",
                       field="attempt") from None
    if not small:
        assert entry.stored is not None
        # a failed copy raises, and the row goes with the transaction
        with tempfile.TemporaryDirectory(prefix="gridtower-log-") as scratch:
            local = Path(scratch) / "log.gz"
            local.write_bytes(body)
            store, path = _place(runtime, entry.stored)
            store.put(str(local), path)
    return entry


def _inflated_size(body: bytes, bound: int, site: str) -> int:
    """The log's size once uncompressed; never inflating more than `bound` + 1 bytes."""
    inflater = zlib.decompressobj(wbits=31)  # gzip, one member
    size = 0
    pending = body
    try:
        while pending and not inflater.eof:
            size += len(inflater.decompress(pending, bound + 1 - size))
            if size > bound:
                raise LogTooLarge(f"the log is over site {site}'s log_bytes once "
                                  "uncompressed", field="log")
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise SpecError(f"the log is not gzip: {exc}", field="log") from None
    if not inflater.eof or inflater.unused_data:
        raise SpecError("the log is not one whole gzip stream", field="log")
    return size


def find(session: Session, job_id: int) -> dict[int, AttemptLog]:
    """The kept logs of a job's attempts, by attempt number (without their bytes)."""
    rows = session.exec(select(AttemptLog).where(col(AttemptLog.job_id) == job_id)).all()
    return {row.attempt: row for row in rows}


def read(session: Session, runtime: Runtime, job_id: int, number: int) -> bytes:
    """The whole log of an attempt, uncompressed."""
    entry = session.exec(select(AttemptLog).where(
        col(AttemptLog.job_id) == job_id, col(AttemptLog.attempt) == number)).first()
    if entry is None:
        raise NotFound(f"no log kept for attempt {number} of job {job_id}", field="attempt")
    if entry.data is not None:
        return gzip.decompress(entry.data)
    assert entry.stored is not None
    try:
        store, path = _place(runtime, entry.stored)
    except KeyError:
        raise NotFound(f"the log of attempt {number} of job {job_id} is at a destination no "
                       f"longer configured ({entry.stored})", field="attempt") from None
    with tempfile.TemporaryDirectory(prefix="gridtower-log-") as scratch:
        local = Path(scratch) / "log.gz"
        try:
            store.get(path, str(local))
        except TransferError:
            # asked only on failure: a stat reads the whole file for its checksum
            if store.stat(path) is not None:
                raise
            raise NotFound(f"the log of attempt {number} of job {job_id} is missing from "
                           "the log store", field="attempt") from None
        return gzip.decompress(local.read_bytes())


def prune(session: Session, runtime: Runtime) -> int:
    """Drop logs older than the retention (their files in the log store too); returns how
    many. A file the store fails to remove keeps its row, for the next cycle; one at a
    destination no longer configured is left there."""
    before = utcnow() - timedelta(days=runtime.config.monitor.log_retention_days)
    old = session.execute(select(col(AttemptLog.id), col(AttemptLog.stored)).where(
        col(AttemptLog.created_at) < before).limit(PRUNE_BATCH)).all()
    gone = []
    for row_id, stored in old:
        if stored:
            try:
                store, path = _place(runtime, stored)
                store.remove(path)
            except KeyError:
                log.warning("the attempt log %s is left at a destination no longer "
                            "configured", stored)
            except TransferError as exc:
                log.warning("cannot remove the attempt log %s: %s", stored, exc)
                continue
        gone.append(row_id)
    if gone:
        session.execute(delete(AttemptLog).where(col(AttemptLog.id).in_(gone)))
    return len(gone)
