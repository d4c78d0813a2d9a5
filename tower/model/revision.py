"""The schema revision this gridtower needs, and the check of a database's, on a plain DB-API
cursor (sqlite3 or psycopg): the tower, every command that opens the database and the
commands that read it without SQLAlchemy all refuse a database of another revision in one
line. Only the standard library and the error tree are imported here, so the check costs
two small queries and no import.

Revisions are numbered ("0001", "0002", ...), each migration's `down_revision` the one
before (tower/model/migrations/versions/), so an older and a newer database are told apart
without Alembic. `HEAD` is Alembic's head (tests/integration/test_migrations.py checks it);
`tower db revision` sets it when it writes a migration.
"""

from __future__ import annotations

from typing import Any

from tower.errors import SchemaError

#: The revision of the newest migration: the schema of these models.
HEAD = "0008"

#: A table every gridtower database holds: a database with it and without a revision was
#: made before migrations existed.
MARK = "production"

EMPTY, CURRENT = "empty", "current"


def read(cursor: Any) -> str | None:
    """The database's revision; "" for a gridtower database made before migrations (no
    `alembic_version` table), None for a database with neither (a new one)."""
    if "sqlite" in type(cursor).__module__:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                       f"AND name IN ('alembic_version', '{MARK}')")
    else:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema "
                       f"= current_schema() AND table_name IN ('alembic_version', '{MARK}')")
    tables = {row[0] for row in cursor.fetchall()}
    if "alembic_version" not in tables:
        return "" if MARK in tables else None
    cursor.execute("SELECT version_num FROM alembic_version")
    found = sorted(row[0] for row in cursor.fetchall())
    return ",".join(found)


def problem(found: str | None, where: str) -> str | None:
    """Why this gridtower cannot work on a database at revision `found` (see `read`), in one
    line; None when it can (at HEAD, or new)."""
    if found is None or found == HEAD:
        return None
    if found == "":
        return (f"database {where} has no schema revision (made before gridtower's "
                f"migrations), this gridtower needs {HEAD}: run `tower db upgrade`")
    if is_older(found):
        return (f"database {where} is at revision {found}, this gridtower needs {HEAD}: "
                "run `tower db upgrade`")
    return (f"database {where} is at revision {found}, this gridtower needs {HEAD}: the "
            "database is newer than this gridtower (or not gridtower's); run the gridtower "
            "that upgraded it")


def is_older(found: str) -> bool:
    """Whether `found` is a revision before HEAD (one `tower db upgrade` knows)."""
    return found.isascii() and found.isdigit() and len(found) == len(HEAD) and found < HEAD


def check(cursor: Any, where: str) -> str:
    """`CURRENT` or `EMPTY` (a database with no table yet); a database of another revision
    raises SchemaError with the one line of `problem`."""
    found = read(cursor)
    trouble = problem(found, where)
    if trouble is not None:
        raise SchemaError(trouble)
    return EMPTY if found is None else CURRENT
