"""Where input data is: the sites that hold a production's inputs, what must be staged in
where, and the paths at which a site's jobs read them.

A site holds a file when the catalog has a good replica of it at the site's
storage element (`data.destination` in sites.yaml). The matchmaker brokers a
production with inputs only to sites that hold all of them; when none does,
it asks for the missing files to be staged in to one site that could, and the
stager copies them there before any job is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import distinct, func
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Replica, ReplicaState
from tower.config import TowerConfig
from tower.model.db import insert_missing
from tower.model.models import StageIn


def _good_at(session: Session, lfns: Sequence[str], destinations: list[str]
             ) -> list[tuple[str, str, str]]:
    """(lfn, destination, path) of the good replicas of `lfns` at `destinations`."""
    if not lfns or not destinations:
        return []
    return [(lfn, destination, path) for lfn, destination, path in session.exec(
        select(CatalogFile.lfn, Replica.destination, Replica.path)
        .join(Replica, col(Replica.file_id) == CatalogFile.id)
        .where(col(CatalogFile.lfn).in_(lfns), col(Replica.destination).in_(destinations),
               Replica.state == ReplicaState.GOOD)).all()]


def holding_sites(session: Session, config: TowerConfig, lfns: Sequence[str],
                  sites: list[str]) -> list[str]:
    """The sites among `sites` whose storage element holds every file of `lfns`."""
    element = {name: config.sites[name].data.destination for name in sites  # type: ignore[union-attr]
               if config.sites[name].data is not None}
    counts = dict(session.exec(
        select(Replica.destination, func.count(distinct(col(CatalogFile.id))))
        .join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
        .where(col(CatalogFile.lfn).in_(lfns), col(Replica.destination).in_(element.values()),
               Replica.state == ReplicaState.GOOD)
        .group_by(col(Replica.destination))).all()) if element else {}
    return [name for name in sites if name in element and counts.get(element[name]) == len(lfns)]


def request_stage_in(session: Session, config: TowerConfig, lfns: Sequence[str],
                     sites: list[str]) -> str | None:
    """Ask for the files missing at one of `sites` (the first with a storage element) to
    be copied there; returns that site, or None when no site has a storage element."""
    target = next((name for name in sites if config.sites[name].data is not None), None)
    if target is None:
        return None
    destination = config.sites[target].data.destination  # type: ignore[union-attr]
    present = {lfn for lfn, _, _ in _good_at(session, lfns, [destination])}
    for lfn in lfns:
        if lfn not in present:
            insert_missing(session, StageIn, lfn=lfn, destination=destination)
    return target


def input_paths(session: Session, config: TowerConfig, lfns: Sequence[str],
                site: str) -> list[dict[str, Any]]:
    """Each input's file name and its path as the site's jobs see it."""
    data = config.sites[site].data
    if data is None or not lfns:
        return []
    return [{"lfn": lfn, "name": PurePosixPath(lfn).name,
             "path": str(PurePosixPath(data.path) / path)}
            for lfn, _, path in _good_at(session, lfns, [data.destination])]


def replicas_of(session: Session, lfn: str) -> list[tuple[str, str, int, str]]:
    """(destination, path, size, adler32) of every good replica of `lfn`."""
    return [tuple(row) for row in session.exec(  # type: ignore[misc]
        select(Replica.destination, Replica.path, CatalogFile.size, CatalogFile.adler32)
        .join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
        .where(CatalogFile.lfn == lfn, Replica.state == ReplicaState.GOOD)).all()]
