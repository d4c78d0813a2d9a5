"""`tower db [check]`, `db upgrade|current|history|prune` (and `db revision`, for developers),
and the database as every command reports it: a database that is missing, unreachable or of
another schema is one line naming it, not a traceback (`tower -v` shows the traceback)."""

from __future__ import annotations

import sys
from typing import Any

import click

from tower.cli.common import Group, config, json_option, local_only, print_json, state


def describe(error: BaseException, database: str | None) -> str | None:
    """One line for a database error (None: not one), naming the database (its password
    redacted) and what the driver said: an error of SQLAlchemy, or of the driver itself
    (sqlite3, psycopg) under the plain reads of `tower status`."""
    found = _said(error)
    if found is None:
        return None
    said, by_driver = found
    said = said.splitlines()[0] if said else type(error).__name__
    where = database or "the database"
    hint = ""
    if by_driver and any(word in said for word in (
            "no such table", "no such column", "does not exist", "not a database",
            "UndefinedColumn", "UndefinedTable")):
        hint = " (is it a gridtower database, of this version?)"
    return f"database {where}: {said}{hint}"


def _said(error: BaseException) -> tuple[str, bool] | None:
    """What `error` says and whether the database driver said it; None when neither
    SQLAlchemy nor a driver raised it."""
    # a library is looked at only if the command loaded it: an error can come from it then
    import sys

    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        if isinstance(error, DBAPIError):
            return str(error.orig).strip(), True
        if isinstance(error, SQLAlchemyError):
            return str(error).strip(), False
    drivers = tuple(sys.modules[name].Error for name in ("sqlite3", "psycopg")
                    if name in sys.modules)
    return (str(error).strip(), True) if isinstance(error, drivers) else None


@click.group(cls=Group, invoke_without_command=True)
@json_option
@click.pass_context
def db(ctx: click.Context, as_json: bool) -> int | None:
    """the database: `db check` (the default) says which database the config names and
    whether its tables and columns are the ones this tower expects (it makes no table);
    `db upgrade` brings it to this gridtower's schema revision"""
    return check_schema(as_json) if ctx.invoked_subcommand is None else None


@db.command()
@json_option
def check(as_json: bool) -> int:
    """which database, and whether its schema is this tower's (exit 1 if not)"""
    return check_schema(as_json)


def check_schema(as_json: bool) -> int:
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from tower.model import revision
    from tower.model.db import make_engine, raw_cursor

    loaded, where = _database()
    engine = make_engine(loaded.database_url)
    try:
        with engine.connect() as connection:
            found = revision.read(raw_cursor(connection))
        present = inspect(engine)
        tables = set(present.get_table_names())
        missing = sorted(set(SQLModel.metadata.tables) - tables)
        columns = sorted(f"{name}.{column.name}" for name, table in SQLModel.metadata.tables.items()
                         if name in tables for column in table.columns
                         if column.name not in {c["name"] for c in present.get_columns(name)})
    finally:
        engine.dispose()
    trouble = revision.problem(found, where)
    current = not missing and not columns and trouble is None
    if as_json:
        print_json({"database": where, "current": current, "revision": found or None,
                    "head": revision.HEAD, "problem": trouble, "missing_tables": missing,
                    "missing_columns": columns})
    elif current:
        print(f"{where}: schema current ({len(SQLModel.metadata.tables)} tables, revision "
              f"{found})")
    else:
        empty = len(missing) == len(SQLModel.metadata.tables)
        print(trouble if trouble and not empty else f"{where}: " + (
            "no tables yet (`tower submit` or `tower run` makes them)" if empty
            else "not this tower's schema"))
        for name in [] if empty else missing:
            print(f"  missing table {name}")
        for name in columns:
            print(f"  missing column {name}")
    return 0 if current else 1


@db.command()
@json_option
def upgrade(as_json: bool) -> int:
    """bring the database to this gridtower's schema revision, in one transaction (a new
    database is made; one made before migrations is adopted first); back it up before"""
    from tower.model import migrate
    from tower.model.db import make_engine

    loaded, where = _database()
    engine = make_engine(loaded.database_url)
    try:
        done = migrate.upgrade(engine, where)
    finally:
        engine.dispose()
    said = ("made at" if done.before is None else
            "already at" if done.before == done.after else
            f"upgraded from {done.before or 'before migrations'} to")
    if as_json:
        print_json({"database": where, "before": done.before, "after": done.after})
    else:
        print(f"{where}: {said} revision {done.after}")
    return 0


@db.command()
@json_option
def current(as_json: bool) -> int:
    """the database's schema revision and this gridtower's (exit 6 unless they agree or the
    database is new)"""
    from tower.model import revision
    from tower.model.db import make_engine, raw_cursor

    loaded, where = _database()
    engine = make_engine(loaded.database_url)
    try:
        with engine.connect() as connection:
            found = revision.read(raw_cursor(connection))
    finally:
        engine.dispose()
    trouble = revision.problem(found, where)
    if as_json:
        print_json({"database": where, "revision": found or None, "head": revision.HEAD,
                    "new": found is None, "current": found == revision.HEAD,
                    "problem": trouble})
    else:
        print(f"{where}: " + ("new (no table yet)" if found is None else
                              "no revision (made before migrations)" if found == "" else
                              f"revision {found}") + f"; this gridtower: {revision.HEAD}")
        if trouble is not None:
            print(f"tower: {trouble}", file=sys.stderr)
    return 6 if trouble is not None else 0


@db.command()
@json_option
def history(as_json: bool) -> int:
    """the migrations this gridtower ships, oldest first"""
    from tower.model import migrate

    revisions = migrate.history()
    if as_json:
        print_json(revisions)
    else:
        for item in revisions:
            print(f"{item['revision']}  {item['message'].splitlines()[0]}"
                  + ("  (head)" if item["head"] else ""))
    return 0


@db.command()
@click.option("--dry-run", is_flag=True, help="count what would be removed; change nothing")
@json_option
def prune(dry_run: bool, as_json: bool) -> int:
    """coarsen the history of productions finished longer ago than tower.yaml's
    `retention.finished_for`: each job keeps its last event, activity is folded into days;
    jobs, attempts, decisions, usage and the catalog stay whole"""
    from tower.model import prune as pruning
    from tower.model.db import make_engine, transaction

    loaded, where = _database()
    engine = make_engine(loaded.database_url)
    try:
        with transaction(engine) as session:  # a dry run only reads
            done = pruning.prune(session, loaded.retention.finished_for, dry_run)
    finally:
        engine.dispose()
    if as_json:
        print_json({"database": where, "dry_run": dry_run, "finished_before": done.before,
                    "productions": done.productions, "job_events": done.job_events,
                    "activity_rows": done.activity_rows})
    else:
        verb = "would remove" if dry_run else "removed"
        print(f"{where}: {len(done.productions)} productions finished before "
              f"{done.before:%Y-%m-%d %H:%M} UTC; {verb} {done.job_events} job events "
              f"(each job keeps its last) and {done.activity_rows} activity rows "
              "(folded into days)")
    return 0


@db.command(hidden=True)
@click.option("-m", "--message", required=True, help="what the migration changes")
def revision(message: str) -> int:
    """for developers: write the next migration from the models (autogenerate against a
    scratch SQLite database at head) and move HEAD in tower/model/revision.py to it"""
    from tower.model import migrate

    print(f"wrote {migrate.new_revision(message)}: read it, adjust it, test it")
    return 0


def _database() -> tuple[Any, str]:
    from pilots.urls import redact

    local_only()
    loaded = config()
    where = state().database = redact(loaded.database_url)
    return loaded, where


COMMANDS = [db]
