"""Lineage: the files each cataloged file was made from, and the walk up and down from one.

A file's parents are recorded when it is registered (LFN and adler32 as its
job read them); the job and attempt that made it are the file's own. The
walk goes up to the files nothing made (a generator's output) and down to
every descendant, each file once, at most MAX_FILES of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from catalog.errors import NotFound
from catalog.models import CatalogFile, FileParent

#: The most files one walk returns in each direction (a 10^5-file campaign's tree is
#: read in pages of this, by walking from a file further down).
MAX_FILES = 10_000


def record(session: Session, entry: CatalogFile, parents: Sequence[tuple[str, str]]) -> None:
    """`entry` was made from `parents` (lfn, adler32): replaces what an older attempt's
    output recorded."""
    assert entry.id is not None
    session.execute(delete(FileParent).where(col(FileParent.file_id) == entry.id))
    unique = dict(parents)
    ids = dict(session.exec(select(CatalogFile.lfn, CatalogFile.id).where(
        col(CatalogFile.lfn).in_(unique))).all()) if unique else {}
    session.add_all(FileParent(file_id=entry.id, parent_id=ids.get(lfn), lfn=lfn,
                               adler32=adler32) for lfn, adler32 in unique.items())
    session.flush()


def walk(session: Session, lfn: str) -> dict[str, Any]:
    """The file `lfn`, every file it was made from (up to the generator) and every file
    made from it (down to the last step), each with its parents, its depth from `lfn`,
    and the job and attempt that made it."""
    start = session.exec(select(CatalogFile).where(CatalogFile.lfn == lfn)).first()
    if start is None:
        raise NotFound(f"the catalog holds no file {lfn!r}", field="lfn")
    assert start.id is not None
    up = _levels(session, start.id, up=True)
    down = _levels(session, start.id, up=False)
    everything = {start.id: 0, **{k: -v for k, v in up.items()}, **down}
    files = _describe(session, list(everything))
    parents = _parents(session, list(everything))
    return {
        "file": {**files[start.id], "parents": parents.get(start.id, [])},
        "ancestors": [{**files[k], "depth": up[k], "parents": parents.get(k, [])}
                      for k in sorted(up, key=lambda k: (up[k], files[k]["lfn"]))],
        "descendants": [{**files[k], "depth": down[k], "parents": parents.get(k, [])}
                        for k in sorted(down, key=lambda k: (down[k], files[k]["lfn"]))],
        "truncated": len(up) >= MAX_FILES or len(down) >= MAX_FILES,
    }


def _levels(session: Session, start: int, up: bool) -> dict[int, int]:
    """{file id: depth} of the files above (`up`) or below `start`, breadth first; a file
    seen once is not followed again, so a cycle (which registration cannot make) ends."""
    seen: dict[int, int] = {}
    frontier, depth = [start], 0
    mine, theirs = ((FileParent.file_id, FileParent.parent_id) if up
                    else (FileParent.parent_id, FileParent.file_id))
    while frontier and len(seen) < MAX_FILES:
        depth += 1
        found: list[int] = []
        for chunk in range(0, len(frontier), 1000):
            found += [other for other in session.exec(select(theirs).where(
                col(mine).in_(frontier[chunk:chunk + 1000]), col(theirs).is_not(None))).all()
                if other is not None]
        frontier = []
        for other in dict.fromkeys(found):
            if other != start and other not in seen and len(seen) < MAX_FILES:
                seen[other] = depth
                frontier.append(other)
    return seen


def _describe(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for chunk in range(0, len(ids), 1000):
        for entry in session.exec(select(CatalogFile).where(
                col(CatalogFile.id).in_(ids[chunk:chunk + 1000]))).all():
            rows[entry.id or 0] = {"lfn": entry.lfn, "adler32": entry.adler32,
                                   "size": entry.size, "job": entry.job_id,
                                   "attempt": entry.attempt}
    return rows


def _parents(session: Session, ids: list[int]) -> dict[int, list[dict[str, str]]]:
    found: dict[int, list[dict[str, str]]] = {}
    for chunk in range(0, len(ids), 1000):
        for row in session.exec(select(FileParent).where(
                col(FileParent.file_id).in_(ids[chunk:chunk + 1000]))
                .order_by(col(FileParent.lfn))).all():
            found.setdefault(row.file_id, []).append({"lfn": row.lfn, "adler32": row.adler32})
    return found
