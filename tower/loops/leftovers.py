"""Files that nothing names, at destinations and at sites' storage: found, and removed.

A copy is written under a temporary name (`transfer.base.partial_name`) and renamed, so a
tower killed mid-copy leaves the temporary behind for good. At a destination a temporary
is left over once it is older than `storage.lease` and no live lease holds an output of
its final name: a live copy writes it all the time, and its lease is renewed while it
runs. (Removing one that a stalled copy still held makes only that copy fail and be made
again: the rename finds no file, and nothing damaged ever gets the final name. The same
holds when a destination's clock runs ahead of the tower's.) A file
under a final name that no replica, no output being staged and no stage-in names is an
orphan: `catalog verify` reports it, and removes it only when asked.

At a site's storage, a pilot leaves an attempt's outputs in `PRODUCTION/JOB.ATTEMPT/`
(pilots.payload). Once the attempt has ended, a file there is held only by an output row
still to be staged, or staged and kept because no destination of the production asks for
`remove_source`; anything else (a move cut short by a full disk, the outputs of a failed
or dropped attempt, a site copy a killed tower never removed) is left over. Only those
attempt directories are looked in: nothing else at the site's storage is touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from catalog.models import CatalogFile, Dataset, Replica
from catalog.timeutil import utcnow
from tower.errors import TransferError
from tower.model.models import Attempt, Job, Output, Production, StageIn
from tower.runtime import Runtime
from transfer.base import partial_of

log = logging.getLogger(__name__)

#: An attempt directory at a site: (site, production name, job id, attempt number).
AttemptDir = tuple[str, str, int, int]


@dataclass(frozen=True)
class Leftover:
    #: A destination's name, or `site NAME` for a site's storage.
    where: str
    #: Relative to the root of `where`.
    path: str
    size: int
    #: `partial` (a temporary of a copy that died) or `orphan` (a whole file nothing names).
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def at_destination(runtime: Runtime, destination: str, dataset: str,
                   partial_age: float | None = None) -> list[Leftover]:
    """Files directly in `dataset`'s directory at `destination` that nothing names.

    A temporary counts once older than `partial_age` seconds (default `storage.lease`).
    Raises TransferError when the destination cannot be listed.
    """
    stale = runtime.config.storage.lease if partial_age is None else partial_age
    entries = runtime.transfer(destination).listing(dataset)
    if not entries:
        return []
    # read after listing: whatever made a listed file had named it by then (an output row
    # is written before its copy, a replica in the same transaction as the output is staged)
    with Session(runtime.engine) as session:
        named, leased = _named_at_destination(session, destination, dataset)
    now = time.time()
    found = []
    for entry in entries:
        if entry.directory:
            continue
        path = f"{dataset}/{entry.name}"
        final = partial_of(entry.name)
        if final is not None:
            if final not in leased and now - entry.mtime >= stale:
                found.append(Leftover(destination, path, entry.size, "partial"))
        elif path not in named:
            found.append(Leftover(destination, path, entry.size, "orphan"))
    return found


def _named_at_destination(session: Session, destination: str,
                          dataset: str) -> tuple[set[str], set[str]]:
    """Paths that replicas, outputs being staged and pending stage-ins name at
    `destination` in `dataset`; and the output names under a live lease there."""
    named = set(session.execute(
        select(col(Replica.path)).join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
        .join(Dataset, col(Dataset.id) == CatalogFile.dataset_id)
        .where(col(Dataset.name) == dataset, col(Replica.destination) == destination)).scalars())
    staging = session.execute(
        select(col(Output.name), col(Output.lease_until))
        .join(Job, col(Job.id) == Output.job_id)
        .join(Production, col(Production.id) == Job.production_id)
        .where(col(Production.dataset) == dataset, col(Output.staged).is_(False))).all()
    named.update(f"{dataset}/{name}" for name, _ in staging)
    now = utcnow()
    leased = {name for name, until in staging if until is not None and until > now}
    pending = select(col(StageIn.lfn)).where(col(StageIn.destination) == destination,
                                             col(StageIn.done).is_(False))
    named.update(session.execute(
        select(col(Replica.path)).join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
        .where(col(CatalogFile.lfn).in_(pending))).scalars())
    return named, leased


def at_site(runtime: Runtime, attempts: Iterable[AttemptDir]) -> list[Leftover]:
    """Files in the directories of these ended attempts at their sites' storage that no
    held output names. Raises TransferError when a site's storage cannot be listed."""
    found: list[Leftover] = []
    for site, production, job, number in attempts:
        directory = f"{production}/{job}.{number}"
        entries = runtime.site_storage(site).listing(directory)
        if not entries:
            continue
        with Session(runtime.engine) as session:
            held = _held_at_site(runtime, session, site, job, number)
        if held is None:
            continue
        found.extend(Leftover(f"site {site}", f"{directory}/{entry.name}", entry.size,
                              "partial" if partial_of(entry.name) else "orphan")
                     for entry in entries
                     if not entry.directory and f"{directory}/{entry.name}" not in held)
    return found


def _held_at_site(runtime: Runtime, session: Session, site: str, job: int,
                  number: int) -> set[str] | None:
    """Paths at `site`'s storage that the outputs of attempt `number` of `job` still need;
    None when all of its directory is held."""
    attempt = session.execute(select(col(Attempt.ended_at)).where(
        col(Attempt.job_id) == job, col(Attempt.number) == number)).first()
    if attempt is None or attempt.ended_at is None:
        # not an attempt of this tower's, or one still running
        return None
    production = session.execute(select(col(Production.spec)).join(
        Job, col(Job.production_id) == Production.id).where(col(Job.id) == job)).scalar_one()
    destinations = runtime.config.storage.destinations
    freed = any(destinations[name].remove_source
                for name in production.get("destinations") or [] if name in destinations)
    root = PurePosixPath(runtime.config.sites[site].storage)
    held = set()
    for source, staged in session.execute(select(col(Output.source), col(Output.staged)).where(
            col(Output.job_id) == job, col(Output.attempt) == number)).all():
        if not (staged and freed) and PurePosixPath(source).is_relative_to(root):
            held.add(str(PurePosixPath(source).relative_to(root)))
    return held


def places(session: Session, dataset: str | None = None) -> set[tuple[str, str]]:
    """(destination, dataset) where a dataset's files are: the destinations its productions
    copy to, and those holding a replica of it (stage-in targets among them); of one
    `dataset`, or of all."""
    productions = select(col(Production.dataset), col(Production.spec))
    holding = (select(col(Replica.destination), col(Dataset.name)).distinct()
               .join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
               .join(Dataset, col(Dataset.id) == CatalogFile.dataset_id))
    if dataset is not None:
        productions = productions.where(col(Production.dataset) == dataset)
        holding = holding.where(col(Dataset.name) == dataset)
    copied_to = {(destination, name) for name, spec in session.execute(productions).all()
                 for destination in spec.get("destinations") or []}
    return copied_to | {(destination, name) for destination, name in session.execute(holding)}


def ended_attempts(session: Session, since: Any = None, limit: int | None = None,
                   ) -> list[tuple[AttemptDir, Any]]:
    """Attempt directories of attempts ended after `since` (all if None), oldest end
    first, each with when it ended."""
    query = (select(col(Attempt.site), col(Production.name), col(Attempt.job_id),
                    col(Attempt.number), col(Attempt.ended_at))
             .join(Job, col(Job.id) == Attempt.job_id)
             .join(Production, col(Production.id) == Job.production_id)
             .where(col(Attempt.ended_at).is_not(None), col(Attempt.pilot_id).is_not(None)))
    if since is not None:
        query = query.where(col(Attempt.ended_at) > since)
    rows = session.execute(query.order_by(col(Attempt.ended_at)).limit(limit)).all()
    return [((site, name, job, number), ended) for site, name, job, number, ended in rows]


def remove(runtime: Runtime, leftovers: Iterable[Leftover]) -> int:
    """Remove each leftover (and an attempt directory at a site that it leaves empty);
    returns how many were removed. One that cannot be is logged and left for next time."""
    removed = 0
    emptied: set[tuple[str, str]] = set()
    for leftover in leftovers:
        transfer = _backend(runtime, leftover.where)
        try:
            transfer.remove(leftover.path)
        except TransferError as exc:
            log.warning("cannot remove %s %s: %s", leftover.where, leftover.path, exc)
            continue
        removed += 1
        log.info("removed %s %s at %s (%d bytes)", leftover.kind, leftover.path,
                 leftover.where, leftover.size)
        if leftover.where.startswith("site "):
            emptied.add((leftover.where, str(PurePosixPath(leftover.path).parent)))
    for where, directory in emptied:
        try:
            _backend(runtime, where).remove_directory(directory)
        except TransferError as exc:
            log.warning("cannot remove %s %s: %s", where, directory, exc)
    return removed


def _backend(runtime: Runtime, where: str) -> Any:
    if where.startswith("site "):
        return runtime.site_storage(where.removeprefix("site "))
    return runtime.transfer(where)


def everywhere(runtime: Runtime, partial_age: float | None = None) -> list[Leftover]:
    """Every file nothing names: in each production's dataset directory at each destination
    it copies to, and in each ended attempt's directory at its site's storage. Reads all of
    them, for checks (`catalog verify`, a fault suite's ledger), not for the loops; pass
    `partial_age=0` when no copy runs, so every temporary counts."""
    with Session(runtime.engine) as session:
        directories = places(session)
        attempts = [where for where, _ in ended_attempts(session)]
    found = []
    for destination, dataset in sorted(directories):
        if destination in runtime.config.storage.destinations:
            found.extend(at_destination(runtime, destination, dataset, partial_age))
    return found + at_site(runtime, [a for a in attempts if a[0] in runtime.config.sites])


#: At a tower's start, attempts ended this long before are looked at again: what a tower
#: killed earlier may have left at the sites without reaching its sweep.
START_LOOKBACK = timedelta(days=1)
#: Attempt directories one pass looks in at most (a pass is one listing per directory).
ATTEMPTS_PER_PASS = 2000


class Sweeper:
    """The stager's sweep, at its start and then once per `storage.lease`, at a bounded
    cost: it looks only in the dataset directories it copied into (and, at start, those
    of outputs left unstaged, which a killed tower may have been copying), and in the
    directories of attempts that ended since its last pass. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (destination, dataset) -> when this tower last copied there (monotonic).
        self._directories: dict[tuple[str, str], float] = {}
        #: (job, attempt) whose outputs the stager dropped: their site copies go too.
        self._dropped: set[tuple[int, int]] = set()
        self._cursor: datetime | None = None
        self._next = 0.0

    def copied(self, destination: str, dataset: str) -> None:
        """A copy into `dataset` at `destination` ended (made, or failed)."""
        with self._lock:
            self._directories[(destination, dataset)] = time.monotonic()

    def dropped(self, job: int, attempt: int) -> None:
        """The outputs of `attempt` of `job` are not wanted any more."""
        with self._lock:
            self._dropped.add((job, attempt))

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def sweep(self, runtime: Runtime) -> int:
        """One pass; returns how many files were removed."""
        lease = runtime.config.storage.lease
        started = time.monotonic()
        self._next = started + lease
        with Session(runtime.engine) as session:
            if self._cursor is None:
                self._cursor = utcnow() - START_LOOKBACK
                unstaged = _unstaged_directories(runtime, session)
                with self._lock:
                    for directory in unstaged:
                        self._directories.setdefault(directory, started)
            since = self._cursor - timedelta(seconds=lease)  # commits seen late
            ended = ended_attempts(session, since, ATTEMPTS_PER_PASS)
            with self._lock:
                dropped, self._dropped = self._dropped, set()
                directories = dict(self._directories)
            attempts = {where for where, _ in ended} | set(_directories_of(session, dropped))
        found: list[Leftover] = []
        for (destination, dataset), touched in directories.items():
            try:
                # whole files nothing names are only reported (catalog verify): one may be
                # an operator's, or all that is left of an output
                found.extend(leftover for leftover in at_destination(runtime, destination,
                                                                      dataset)
                             if leftover.kind == "partial")
            except (TransferError, KeyError) as exc:
                log.warning("sweep of %s at %s: %s", dataset, destination, exc)
                continue
            # a temporary of a copy that ended before `touched` is old enough by now
            if started - touched >= lease:
                with self._lock:
                    if self._directories.get((destination, dataset)) == touched:
                        del self._directories[(destination, dataset)]
        for where in sorted(attempts):
            if where[0] not in runtime.config.sites:
                continue
            try:
                found.extend(at_site(runtime, [where]))
            except TransferError as exc:
                log.warning("sweep of site %s %s: %s", where[0], where[1], exc)
                with self._lock:
                    self._dropped.add((where[2], where[3]))
        if ended:
            self._cursor = max(self._cursor, ended[-1][1])
        return remove(runtime, found)


#: One sweeper per tower process (Runtime.instance), shared by the stager's threads.
_sweepers: dict[str, Sweeper] = {}
_sweepers_lock = threading.Lock()


def sweeper(runtime: Runtime) -> Sweeper:
    """This tower process's sweeper."""
    with _sweepers_lock:
        return _sweepers.setdefault(runtime.instance, Sweeper())


def _unstaged_directories(runtime: Runtime, session: Session) -> set[tuple[str, str]]:
    """(destination, dataset) of every output still to be staged, and of every input
    still to be staged in."""
    rows = session.execute(
        select(col(Production.dataset), col(Production.spec)).where(col(Production.id).in_(
            select(col(Job.production_id)).join(Output, col(Output.job_id) == Job.id)
            .where(col(Output.staged).is_(False))))).all()
    found = {(name, dataset) for dataset, spec in rows
             for name in spec.get("destinations") or []}
    inputs = session.execute(
        select(col(StageIn.destination), col(Replica.path))
        .join(CatalogFile, col(CatalogFile.lfn) == StageIn.lfn)
        .join(Replica, col(Replica.file_id) == CatalogFile.id)
        .where(col(StageIn.done).is_(False))).all()
    found.update((name, str(PurePosixPath(path).parent)) for name, path in inputs)
    return {(name, dataset) for name, dataset in found
            if name in runtime.config.storage.destinations}


def _directories_of(session: Session, pairs: set[tuple[int, int]]) -> list[AttemptDir]:
    if not pairs:
        return []
    jobs = {job for job, _ in pairs}
    rows = session.execute(
        select(col(Attempt.site), col(Production.name), col(Attempt.job_id),
               col(Attempt.number))
        .join(Job, col(Job.id) == Attempt.job_id)
        .join(Production, col(Production.id) == Job.production_id)
        .where(col(Attempt.job_id).in_(jobs))).all()
    return [(site, name, job, number) for site, name, job, number in rows
            if (job, number) in pairs]
