"""Registering files and replicas, and reading a dataset back.

A job's output is registered once ("exactly once" whatever is retried):

- the same attempt's output registered again returns the existing entry;
- a newer attempt's output of the same name replaces the entry in place (size,
  adler32, attempt, events, metadata), and marks its replicas bad, "superseded
  by attempt N", until the new copies are added;
- an older attempt's output raises StaleAttempt and writes nothing, so its
  caller cannot attach the older copies to the newer entry;
- a name another job registered in the dataset raises Conflict.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, update
from sqlmodel import Session, col, select

from catalog.errors import Conflict, NotFound
from catalog.models import CatalogFile, Dataset, Replica, ReplicaState
from catalog.timeutil import utcnow
from transfer.paths import plain_name


class StaleAttempt(Conflict):
    """A newer attempt's output is registered already."""


def register(session: Session, dataset: str, name: str, size: int, adler32: str,
             job_id: int, attempt: int, meta: dict[str, Any]) -> CatalogFile:
    """The catalog entry of a job's output, by the rules in this module's docstring.

    `meta["events"]`, when an int, is the file's event count.
    """
    lfn = f"/{dataset}/{plain_name(name, f'dataset {dataset}')}"
    entry = session.exec(select(CatalogFile).where(
        CatalogFile.job_id == job_id, CatalogFile.name == name).with_for_update()).first()
    if entry is None:
        return _create(session, dataset, lfn, name, size, adler32, job_id, attempt, meta)
    if attempt < entry.attempt:
        raise StaleAttempt(f"{lfn}: attempt {attempt} of job {job_id} is not registered: "
                           f"attempt {entry.attempt}'s output is", field="attempt")
    if attempt == entry.attempt:
        if (size, adler32) != (entry.size, entry.adler32):
            raise Conflict(f"{lfn}: attempt {attempt} of job {job_id} is registered with "
                           f"{entry.size} bytes, adler32 {entry.adler32}; not {size}, {adler32}",
                           field="adler32")
        return entry
    entry.size, entry.adler32, entry.attempt = size, adler32, attempt
    entry.events, entry.meta = _events(meta), meta
    session.add(entry)
    mark_bad(session, entry, f"superseded by attempt {attempt}")
    return entry


def _create(session: Session, dataset: str, lfn: str, name: str, size: int, adler32: str,
            job_id: int, attempt: int, meta: dict[str, Any]) -> CatalogFile:
    owner = get_dataset(session, dataset)
    clash = session.exec(select(CatalogFile.job_id).where(CatalogFile.lfn == lfn)).first()
    if clash is not None:
        raise Conflict(f"{lfn} is registered already, by job {clash}: output names must be "
                       "unique in a dataset (put ${index} in the name)", field="outputs")
    assert owner.id is not None
    entry = CatalogFile(dataset_id=owner.id, lfn=lfn, name=name, size=size, adler32=adler32,
                        events=_events(meta), job_id=job_id, attempt=attempt, meta=meta)
    session.add(entry)
    session.flush()
    return entry


def _events(meta: dict[str, Any]) -> int | None:
    events = meta.get("events")
    return events if isinstance(events, int) and not isinstance(events, bool) else None


def add_replica(session: Session, entry: CatalogFile, destination: str, url: str,
                path: str | None = None) -> Replica:
    """Record a verified copy of `entry` at `destination`, good as of now.

    `path` is relative to the destination's root, by default the LFN without its
    leading slash (`DATASET/NAME`, where the stager puts it). A copy recorded there
    already (a repeat, or a newer attempt's copy) is updated in place.
    """
    assert entry.id is not None
    copy: dict[str, Any] = {"path": path or entry.lfn.removeprefix("/"), "url": url,
                            "state": ReplicaState.GOOD, "error": None, "checked_at": utcnow()}
    replica = session.exec(select(Replica).where(
        Replica.file_id == entry.id, Replica.destination == destination)).first()
    if replica is None:
        replica = Replica(file_id=entry.id, destination=destination, **copy)
    else:
        replica.sqlmodel_update(copy)
    session.add(replica)
    session.flush()
    return replica


def mark_bad(session: Session, entry: CatalogFile, reason: str) -> None:
    """Every replica of `entry` is not to be read, for `reason` (until a copy is added again)."""
    session.execute(update(Replica).where(col(Replica.file_id) == entry.id).values(
        state=ReplicaState.BAD, error=reason[:500], checked_at=utcnow()))
    session.flush()


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise NotFound(f"no dataset named {name!r}", field="dataset")
    return dataset


def datasets(session: Session) -> list[dict[str, Any]]:
    """Every dataset with its file count and total size."""
    rows = session.exec(
        select(Dataset, func.count(col(CatalogFile.id)),
               func.coalesce(func.sum(CatalogFile.size), 0))
        .join(CatalogFile, col(CatalogFile.dataset_id) == Dataset.id, isouter=True)
        .group_by(col(Dataset.id)).order_by(col(Dataset.name))).all()
    return [{"name": dataset.name, "files": files, "bytes": int(size),
             "created_at": dataset.created_at.isoformat(timespec="seconds"), "meta": dataset.meta}
            for dataset, files, size in rows]


def files(session: Session, dataset: str) -> list[dict[str, Any]]:
    """The files of a dataset, each with its replicas."""
    return describe(session, [col(CatalogFile.dataset_id) == get_dataset(session, dataset).id])


def describe(session: Session, where: list[ColumnElement[bool]], limit: int | None = None
             ) -> list[dict[str, Any]]:
    """The files matching `where` (on CatalogFile and Dataset), in LFN order, the first
    `limit` of them, with every replica and its state."""
    query = (select(CatalogFile, Dataset.name)
             .join(Dataset, col(Dataset.id) == CatalogFile.dataset_id)
             .where(*where).order_by(col(CatalogFile.lfn)))
    entries = session.exec(query.limit(limit) if limit is not None else query).all()
    replicas: dict[int, list[dict[str, Any]]] = {}
    if entries:
        # a page's replicas by its file ids; all of them joined on the same conditions,
        # not an IN list of ids, since a dataset may hold 10^6 files
        chosen = ([col(Replica.file_id).in_([entry.id for entry, _ in entries])]
                  if limit is not None else where)
        for replica in session.exec(
                select(Replica).join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
                .join(Dataset, col(Dataset.id) == CatalogFile.dataset_id).where(*chosen)
                .order_by(col(Replica.destination))).all():
            replicas.setdefault(replica.file_id, []).append({
                "destination": replica.destination, "path": replica.path, "url": replica.url,
                "state": replica.state.value, "error": replica.error,
                "checked_at": _iso(replica.checked_at)})
    return [{"lfn": entry.lfn, "dataset": dataset, "size": entry.size, "adler32": entry.adler32,
             "events": entry.events, "job": entry.job_id, "attempt": entry.attempt,
             "created_at": _iso(entry.created_at), "meta": entry.meta,
             "replicas": replicas.get(entry.id or 0, [])} for entry, dataset in entries]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")
