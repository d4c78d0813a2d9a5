"""Engines and sessions: the same code on SQLite (embedded, WAL) and PostgreSQL."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from itertools import islice
from typing import Any

from sqlalchemy import JSON, Connection, Engine, any_, bindparam, event, insert
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, create_engine

import catalog.models  # noqa: F401  (registers the catalog's tables)
import tower.model.models  # noqa: F401  (registers the tower's tables)
from tower.model.reads import SQLITE_BUSY_TIMEOUT_MS


def normalize_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


#: Connections a PostgreSQL engine keeps open; the API serves as many requests at once
#: (web/front.py), so a request rarely waits for a connection.
POOL_SIZE = 10


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for `url`, tuned for the tower's many short transactions."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False},
                               poolclass=NullPool, **options)
        _tune_sqlite(engine)
        return engine
    # no pre-ping (a round trip per transaction): a connection found dead raises, the pool
    # then drops every connection it holds, and the loop's next cycle or the pilot's
    # retry of its call (after a 5xx) gets a fresh one
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=20, **options)


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


def create_schema(engine: Engine, where: str | None = None) -> None:
    """Make a new database's tables at the head revision, or check that a database that has
    them is at it: one of another revision raises SchemaError (`tower db upgrade` moves it),
    in one line naming `where` (else the engine's URL, password hidden)."""
    from tower.model import revision

    where = where or engine.url.render_as_string(hide_password=True)
    with engine.begin() as connection:
        lock_schema(connection)
        if revision.check(raw_cursor(connection), where) == revision.EMPTY:
            make_at_head(connection)


def make_at_head(connection: Connection) -> None:
    """The tables of the models, stamped with the head revision: the schema the migrations
    make from nothing (tests/integration/test_migrations.py compares the two), in one
    statement per table rather than a replay of every migration."""
    from tower.model import migrate  # Alembic: only for a new database

    SQLModel.metadata.create_all(connection)
    migrate.stamp(connection)
    if connection.dialect.name == "postgresql":
        _vacuum_often(connection)


def lock_schema(connection: Connection) -> None:
    """Two processes starting on one new database make its tables once: on PostgreSQL the
    second waits here for the first's transaction; on SQLite BEGIN IMMEDIATE did it."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")


#: The advisory lock key of schema changes (any number no other user of the database takes).
SCHEMA_LOCK = 0x67726964


def raw_cursor(connection: Connection) -> Any:
    """A DB-API cursor in `connection`'s transaction, for tower.model.revision."""
    return connection.connection.cursor()


#: Tables whose rows change state all day: PostgreSQL's default waits for a fifth of a
#: table to be dead before vacuuming, and until then every index on `state` carries the
#: dead entries of a million moves (a page that takes 20 ms then takes 100 ms).
HOT_TABLES = ("job", "attempt", "output", "queuemessage", "pilot", "jobtally", "activity")


def _vacuum_often(connection: Connection) -> None:
    for table in HOT_TABLES:
        connection.exec_driver_sql(
            f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.01, "
            "autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 1)")


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def among(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """The condition `column IN values`. On PostgreSQL it is `= ANY` of one array
    parameter: a parameter per value costs the client (compiling and binding them) and
    the server (parsing them) more than the statement's own work at thousands of ids."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def insert_missing(session: Session, model: Any, **values: Any) -> None:
    """INSERT a row unless one with the same key exists (a concurrent insert included)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())


def bulk_insert(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `model`'s table, in this transaction
    (see insert_rows)."""
    if rows:
        given = list(rows[0])
        insert_rows(session, model, given, ([row[name] for name in given] for row in rows))


#: Rows per executemany (SQLite) or per block written to a COPY stream (PostgreSQL).
INSERT_CHUNK = 10_000


def insert_rows(session: Session, model: Any, columns: Sequence[str],
                rows: Iterable[Sequence[Any]], constants: Mapping[str, Any] | None = None
                ) -> int:
    """INSERT `rows` (values in the order of `columns`; every row also takes `constants`)
    into `model`'s table in this transaction, streamed INSERT_CHUNK rows at a time, so a
    million rows never sit in memory at once. Returns the rows written.

    PostgreSQL takes them as one COPY stream in text form: a statement per row
    (executemany, even pipelined) costs the client and the server several times more,
    and text made here costs the client a third of psycopg's per-value adaptation. Other
    databases take an executemany per chunk. Column defaults not given are filled in once,
    as an INSERT would (a callable default such as the creation time is the same for
    every row of the call)."""
    table = model.__table__
    fixed = {**_defaults(table, [*columns, *(constants or {})]), **(constants or {})}
    if session.get_bind().dialect.name != "postgresql":
        return _execute_many(session, model, columns, rows, fixed)
    quote = session.get_bind().dialect.identifier_preparer.quote
    names = [*columns, *fixed]
    statement = f"COPY {quote(table.name)} ({', '.join(map(quote, names))}) FROM STDIN"
    encoders = [_copy_json if isinstance(table.columns[name].type, JSON) else _copy_text
                for name in names]
    tail = "".join(f"\t{encode(value)}" for encode, value
                   in zip(encoders[len(columns):], fixed.values(), strict=True)) + "\n"
    row_encoders = encoders[:len(columns)]
    raw = driver_connection(session)  # rows the ORM holds go first, as before an INSERT
    written = 0
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in _chunks(rows):
            copy.write("".join(["\t".join([encode(value) for encode, value
                                            in zip(row_encoders, row, strict=True)]) + tail
                                for row in chunk]))
            written += len(chunk)
    return written


def _defaults(table: Any, given: Sequence[str]) -> dict[str, Any]:
    """The Python-side defaults of `table`'s columns not in `given`, evaluated once."""
    return {column.name: column.default.arg(None) if column.default.is_callable
            else column.default.arg for column in table.columns
            if column.name not in given and column.default is not None}


def _execute_many(session: Session, model: Any, columns: Sequence[str],
                  rows: Iterable[Sequence[Any]], fixed: dict[str, Any]) -> int:
    written = 0
    for chunk in _chunks(rows):
        session.execute(insert(model), [{**dict(zip(columns, row, strict=True)), **fixed}
                                        for row in chunk])
        written += len(chunk)
    return written


def _chunks(rows: Iterable[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, INSERT_CHUNK)):
        yield chunk


#: COPY's text form: a backslash, tab, newline or carriage return in a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """`value` as a field of COPY's text form (None is NULL)."""
    if type(value) is int:  # most values: ids, counts, seeds
        return str(value)
    if value is None:
        return "\\N"
    if isinstance(value, str):  # a StrEnum too: its value
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, enum.Enum):
        return _copy_text(value.value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    return str(value)


def _copy_json(value: Any) -> str:
    return "\\N" if value is None else json.dumps(value).translate(_COPY_ESCAPES)


def driver_connection(session: Session) -> Any:
    """The driver's own connection (sqlite3 or psycopg) under `session`'s transaction, the
    rows the session holds flushed to it first, as before any query: for COPY, and for the
    plain SQL of tower.model.reads."""
    session.flush()
    raw = session.connection().connection.driver_connection
    assert raw is not None
    return raw


def analyze_after_commit(session: Session, model: Any) -> None:
    """Have PostgreSQL re-read `model`'s table statistics once this transaction commits.

    Called after a bulk insert of jobs: until autovacuum comes by (a minute or more), the
    planner would take the new rows for a handful and move jobs by scanning every job
    in their state instead of fetching them by id, at a cost that grows with the
    production."""
    session.info.setdefault("analyze", set()).add(model.__table__.name)


@event.listens_for(Session, "after_commit")
def _analyze(session: Session) -> None:
    tables = session.info.pop("analyze", None)
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    if tables and engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            for table in sorted(tables):
                connection.exec_driver_sql(f"ANALYZE {table}")
            connection.commit()


@event.listens_for(Session, "after_rollback")
def _forget_analyze(session: Session) -> None:
    session.info.pop("analyze", None)
