"""Engines and sessions: the same code on SQLite (embedded, WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, inspect
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, create_engine

import catalog.models  # noqa: F401  (registers the catalog's tables)
import tower.models  # noqa: F401  (registers the tower's tables)

#: SQLite waits this long for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for `url`, tuned for the tower's many short transactions."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False},
                               poolclass=NullPool, **options)
        _tune_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **options)


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and starts reads as
    # shared locks that deadlock when upgraded; take the write lock up front
    # (BEGIN IMMEDIATE) so concurrent writers queue on busy_timeout instead.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet."""
    from tower import tally

    new_tally = not inspect(engine).has_table("jobtally")
    SQLModel.metadata.create_all(engine)
    if engine.dialect.name == "postgresql":
        _vacuum_often(engine)
    if new_tally:  # a database from before the tally: count its jobs once
        with transaction(engine) as session:
            tally.rebuild(session)


#: Tables whose rows change state all day: PostgreSQL's default waits for a fifth of a
#: table to be dead before vacuuming, and until then every index on `state` carries the
#: dead entries of a million moves (a page that takes 20 ms then takes 100 ms).
HOT_TABLES = ("job", "attempt", "output", "queuemessage", "pilot", "jobtally", "activity")


def _vacuum_often(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in HOT_TABLES:
            connection.exec_driver_sql(
                f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.01, "
                "autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 1)")


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def insert_missing(session: Session, model: Any, **values: Any) -> None:
    """INSERT a row unless one with the same key exists (a concurrent insert included)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())
