"""Re-checking a dataset's replicas against the catalog's size and adler32.

The caller passes how to look at a destination, so the catalog needs no transfer
backend: `stat(destination, path)` returns what is there (anything with `size` and
`adler32`, such as transfer.base.FileInfo) or None when nothing is, and raises
BackendError (TransferError) when the destination cannot be reached. The replicas
of an unreachable destination keep their state: nothing is known about them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlmodel import Session, col

from catalog.files import get_dataset
from catalog.models import CatalogFile, Replica, ReplicaState
from catalog.timeutil import utcnow
from sites.errors import BackendError

#: Results written per transaction.
BATCH = 500


class Found(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def adler32(self) -> str: ...


Stat = Callable[[str, str], Found | None]


def verify(session: Session, dataset: str, stat: Stat) -> dict[str, Any]:
    """Check every replica of `dataset`, mark it good, bad or missing, and summarize.

    `session` must not be inside a transaction block: verify commits as it goes, so
    no database lock is held while destinations are read. A replica changed meanwhile
    (by the stager) keeps what its newer writer recorded.
    """
    owner = get_dataset(session, dataset)
    replicas = session.execute(
        select(col(Replica.id), col(Replica.destination), col(Replica.path),
               col(Replica.checked_at), col(CatalogFile.lfn), col(CatalogFile.size),
               col(CatalogFile.adler32))
        .join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
        .where(col(CatalogFile.dataset_id) == owner.id)
        .order_by(col(Replica.destination), col(CatalogFile.lfn))).all()
    session.commit()
    counts = {state: 0 for state in ReplicaState}
    problems: list[dict[str, Any]] = []
    unreachable: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for replica_id, destination, path, seen, lfn, size, adler32 in replicas:
        if destination in unreachable:
            unreachable[destination]["replicas"] += 1
            continue
        try:
            found = stat(destination, path)
        except BackendError as exc:
            unreachable[destination] = {"destination": destination, "error": str(exc),
                                        "replicas": 1}
            continue
        state, error = _judge(found, size, adler32)
        counts[state] += 1
        if state is not ReplicaState.GOOD:
            problems.append({"lfn": lfn, "destination": destination, "path": path,
                             "state": state.value, "error": error})
        results.append({"replica": replica_id, "seen": seen, "new_state": state,
                        "new_error": error})
        if len(results) == BATCH:
            _record(session, results)
            results = []
    _record(session, results)
    return {"dataset": dataset, "replicas": len(replicas), "checked": sum(counts.values()),
            **{state.value: count for state, count in counts.items()},
            "unreachable": list(unreachable.values()), "problems": problems}


def _judge(found: Found | None, size: int, adler32: str) -> tuple[ReplicaState, str | None]:
    if found is None:
        return ReplicaState.MISSING, "not found at the destination"
    if (found.size, found.adler32) != (size, adler32):
        return ReplicaState.BAD, (f"{found.size} bytes, adler32 {found.adler32} at the "
                                  f"destination; cataloged {size} bytes, adler32 {adler32}")
    return ReplicaState.GOOD, None


def _record(session: Session, results: list[dict[str, Any]]) -> None:
    if not results:
        return
    now: datetime = utcnow()
    # only if checked_at is what was read: the stager may have superseded or re-added it
    table = Replica.__table__  # type: ignore[attr-defined]
    session.execute(
        update(table).where(table.c.id == bindparam("replica"),
                            table.c.checked_at.is_not_distinct_from(bindparam("seen")))
        .values(state=bindparam("new_state"), error=bindparam("new_error"), checked_at=now),
        results)
    session.commit()
