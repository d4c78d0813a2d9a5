"""Registering files and replicas, and reading the catalog back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Dataset, Replica
from tower.errors import Conflict, NotFound


def register(session: Session, dataset: str, name: str, size: int, adler32: str,
             job_id: int, attempt: int, meta: dict[str, Any]) -> CatalogFile:
    """The catalog entry of a job's output, created once whatever is retried or repeated.

    Raises Conflict when another job already registered the same logical name.
    """
    existing = session.exec(select(CatalogFile).where(
        CatalogFile.job_id == job_id, CatalogFile.name == name)).first()
    if existing is not None:
        return existing
    owner = get_dataset(session, dataset)
    lfn = f"/{dataset}/{name}"
    clash = session.exec(select(CatalogFile.job_id).where(CatalogFile.lfn == lfn)).first()
    if clash is not None:
        raise Conflict(f"{lfn} is registered already, by job {clash}: output names must be "
                       "unique in a dataset (put ${index} in the name)", field="outputs")
    assert owner.id is not None
    entry = CatalogFile(dataset_id=owner.id, lfn=lfn, name=name, size=size, adler32=adler32,
                        job_id=job_id, attempt=attempt, meta=meta)
    session.add(entry)
    session.flush()
    return entry


def add_replica(session: Session, entry: CatalogFile, destination: str, url: str) -> None:
    """Record a verified copy of `entry` at `destination` (once)."""
    exists = session.exec(select(Replica.id).where(
        Replica.file_id == entry.id, Replica.destination == destination)).first()
    if exists is None and entry.id is not None:
        session.add(Replica(file_id=entry.id, destination=destination, url=url))


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
    owner = get_dataset(session, dataset)
    entries = session.exec(select(CatalogFile).where(CatalogFile.dataset_id == owner.id)
                           .order_by(col(CatalogFile.lfn))).all()
    replicas: dict[int, list[dict[str, str]]] = {}
    if entries:
        for replica in session.exec(select(Replica).where(
                col(Replica.file_id).in_([entry.id for entry in entries]))).all():
            replicas.setdefault(replica.file_id, []).append(
                {"destination": replica.destination, "url": replica.url})
    return [{"lfn": entry.lfn, "size": entry.size, "adler32": entry.adler32,
             "job": entry.job_id, "attempt": entry.attempt, "meta": entry.meta,
             "replicas": replicas.get(entry.id or 0, [])} for entry in entries]
