"""Reads in plain SQL over a DB-API connection: the productions with their jobs per state
(the summaries `tower status`, the API and the pages show) and the job tally.

A local `tower status` would spend about 300 ms importing SQLAlchemy, SQLModel and the
models for three small queries, so these reads import neither: the CLI opens the database
with its driver (`connect`: sqlite3, or psycopg 3), and the ORM's callers hand in their
session's own connection (`tower.model.db.driver_connection`), so the SQL is written once.
The drivers differ in what the SQL here meets: their placeholders (`?` against `%s`), JSON
columns (text in SQLite, parsed by psycopg) and times (text in SQLite).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tower.errors import ConfigError, NotFound
from tower.management.progress import FINISHED, phase, upstream_of

#: A DB-API 2.0 connection of sqlite3 or psycopg.
Connection = Any

#: SQLite waits this long for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def connect(url: str) -> Connection | None:
    """A connection to the database of `url` (a tower's `database_url`) for reading; None
    for a SQLite file not made yet (`tower submit` or `tower run` makes it), which holds
    nothing: every read of None finds no rows. A read never makes a database."""
    from pilots.urls import redact

    scheme, _, rest = url.partition("://")
    driver = scheme.split("+", 1)[0]
    if driver == "sqlite" and rest.startswith("/") and "?" not in rest \
            and rest != "/:memory:":
        import sqlite3

        path = os.path.abspath(rest[1:])  # sqlite:///relative or sqlite:////absolute
        if not os.path.exists(path):
            return None
        # mode=rw: a file that vanished meanwhile is an error, not a new empty database
        return sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True,
                               timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    if driver in ("postgresql", "postgres"):
        import psycopg

        return psycopg.connect(f"postgresql://{rest}")
    raise ConfigError(f"database: {redact(url)}: not a SQLite file or a PostgreSQL "
                      "database URL", field="database")


def _sqlite(connection: Connection) -> bool:
    return type(connection).__module__.startswith("sqlite3")


def _rows(connection: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of `sql`, written with `?` placeholders, in the connection's transaction."""
    if connection is None:  # a SQLite file not made yet
        return []
    if not _sqlite(connection):
        sql = sql.replace("?", "%s")
    cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _json(connection: Connection, value: Any) -> Any:
    """A JSON column's value: SQLite returns its text, psycopg the parsed document."""
    return json.loads(value) if _sqlite(connection) and isinstance(value, str) else value


def _utc(value: Any) -> datetime:
    """A time column's value as an aware UTC datetime, as the tables' column type reads it:
    SQLite returns text without an offset (stored in UTC), psycopg an aware datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Count:
    jobs: int
    events: int


def counts(connection: Connection, production_id: int | None = None
           ) -> dict[int, dict[str, Count]]:
    """{production id: {state: Count}} for one production or all, from the job tally;
    states with no jobs left out. (The ORM's callers write their transaction's pending
    deltas first: `tower.model.tally.counts`.)"""
    where, params = ("WHERE production_id = ? ", (production_id,)) \
        if production_id is not None else ("", ())
    result: dict[int, dict[str, Count]] = {}
    for pid, state, jobs, events in _rows(
            connection, "SELECT production_id, state, SUM(jobs), SUM(events) FROM jobtally "
            f"{where}GROUP BY production_id, state ORDER BY production_id, state", params):
        if jobs:
            result.setdefault(pid, {})[str(state)] = Count(int(jobs), int(events))
    return result


def held_outputs(connection: Connection, production_id: int | None = None
                 ) -> dict[int, dict[str, dict[str, Any]]]:
    """{production id: {destination: {"outputs": n, "bytes": b, "last_error": e}}} for the
    outputs still waiting at their sites for a destination (down, or not reached yet)."""
    where, params = ("AND job.production_id = ? ", (False, production_id)) \
        if production_id is not None else ("", (False,))
    rows = _rows(connection, "SELECT output.copied, output.size, output.last_error, "
                 "job.production_id FROM output JOIN job ON job.id = output.job_id "
                 f"WHERE output.staged = ? {where}ORDER BY output.id", params)
    # each production's destinations, read once, not joined onto every waiting output
    ids = sorted({row[3] for row in rows})
    destinations = {pid: _json(connection, spec).get("destinations", []) for pid, spec in _rows(
        connection, f"SELECT id, spec FROM production WHERE id IN ({', '.join('?' * len(ids))})",
        tuple(ids))} if ids else {}
    held: dict[int, dict[str, dict[str, Any]]] = {}
    for copied, size, error, pid in rows:
        done = _json(connection, copied) or []
        for destination in destinations.get(pid, []):
            if destination in done:
                continue
            entry = held.setdefault(pid, {}).setdefault(
                destination, {"outputs": 0, "bytes": 0, "last_error": None})
            entry["outputs"] += 1
            entry["bytes"] += size
            if error and destination in error:
                entry["last_error"] = error
    return held


def summaries(connection: Connection, name: str | None = None) -> list[dict[str, Any]]:
    """One production (or all, in the order they were made) with its jobs per state, events
    done, and the outputs waiting at the sites for each destination."""
    where, params = ("WHERE name = ? ", (name,)) if name else ("", ())
    chosen = _rows(connection, "SELECT id, name, state, dataset, priority, events_total, "
                   f"created_at FROM production {where}ORDER BY id", params)
    if name and not chosen:
        raise NotFound(f"no production named {name!r}", field="production")
    only = chosen[0][0] if name else None
    tally, held = counts(connection, only), held_outputs(connection, only)
    waiting = waiting_for_upstream(connection, [row[1] for row in chosen if row[2] == "active"],
                                   None if name else tally)
    result = []
    for pid, called, state, dataset, priority, events_total, created_at in chosen:
        states = tally.get(pid, {})
        done = states.get("done")
        jobs = {job_state: count.jobs for job_state, count in states.items()}
        result.append({
            "outputs_waiting": held.get(pid, {}),
            "name": called, "state": state, "dataset": dataset,
            # the one word the CLI, the API, the pages and notifications use for it
            "phase": phase(state, jobs, waiting=called in waiting),
            "priority": priority,
            "jobs": sum(jobs.values()),
            "states": jobs,
            "events_total": events_total,
            "events_done": done.events if done else 0,
            "created_at": _utc(created_at).isoformat(timespec="seconds"),
        })
    return result


#: Production states that make no more jobs or files.
CLOSED = ("cancelled", "rejected")


def waiting_for_upstream(connection: Connection, names: list[str],
                         tally: dict[int, dict[str, Count]] | None = None) -> set[str]:
    """Those of the productions `names` that read an upstream production's outputs
    (split by inputs) while it has not ended, so more of their jobs may be made. Ended:
    closed, or all its jobs made and ended, and for a step of a chain its own upstream
    ended (files cataloged but not yet consumed are consumed by the next matchmaker
    cycle, and not looked for here). `tally`: every production's counts, when the caller
    read them already. Pages and /metrics ask on every request: every production's spec
    is read only when one of `names` is a step of a chain."""
    if not names:
        return set()
    active = {called: _json(connection, spec) for called, spec in _rows(
        connection, "SELECT name, spec FROM production WHERE state = 'active'")}
    if not any(active.get(name, {}).get("split") is not None for name in names):
        return set()
    rows = {called: (pid, state, full_run, _json(connection, spec)) for
            pid, called, state, full_run, spec in _rows(
                connection, "SELECT id, name, state, full_run, spec FROM production")}
    steps = [name for name in names if name in rows and rows[name][3].get("split") is not None]
    tally = counts(connection) if tally is None else tally

    def ended(name: str, seen: frozenset[str]) -> bool:
        if name not in rows or name in seen:  # gone, or a cycle (refused at submit)
            return True
        pid, state, full_run, spec = rows[name]
        if state in CLOSED:
            return True
        if not full_run or state == "requested" or any(
                job_state not in FINISHED for job_state in tally.get(pid, {})):
            return False
        return spec.get("split") is None or all(
            ended(up, seen | {name}) for up in upstream_of(spec))

    return {name for name in steps
            if not all(ended(up, frozenset({name})) for up in upstream_of(rows[name][3]))}
