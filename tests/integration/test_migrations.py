"""Migrations (Alembic, tower/model/migrations/): a database of the release before them
upgrades in place and goes on working; models and migrations agree; a new database is the
same whichever way it is made; a database of another revision is refused in one line.

The release before migrations is tests/data/pre_migrations/: its schema as that release
made it on each database, and the rows of a real production run by it (see its README)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlmodel
from alembic import command
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, Table, inspect, select, text
from sqlmodel import Session, SQLModel, col
from sqlmodel.sql.sqltypes import AutoString

from pilots.urls import redact
from tests.conftest import write_home
from tests.e2e.test_cli import tower
from tests.integration.conftest import LiveTower, placed_jobs, toy_production
from tower.config import load_config
from tower.errors import SchemaError
from tower.model import migrate, revision, tally
from tower.model.db import create_schema, make_engine, raw_cursor
from tower.model.models import Job
from tower.model.states import JobState
from tower.runtime import Runtime

DUMP = Path(__file__).resolve().parents[1] / "data" / "pre_migrations"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    yield made
    made.dispose()


def plain(value: Any) -> Any:
    """A value as the dump holds it (datetimes as naive UTC ISO strings)."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value).isoformat()
    return value


def load_pre_migration_database(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The release before migrations' schema and rows, as that release left them."""
    schema = (DUMP / f"schema.{engine.dialect.name}.sql").read_text()
    rows: dict[str, list[dict[str, Any]]] = json.loads((DUMP / "rows.json").read_text())
    with engine.begin() as connection:
        for statement in schema.split(";\n"):
            if statement.strip():
                connection.exec_driver_sql(statement)
        tables = MetaData()
        tables.reflect(connection)
        for table in tables.sorted_tables:
            dates = {c.name for c in table.columns if isinstance(c.type, DateTime)}
            values = [{name: datetime.fromisoformat(value).replace(tzinfo=UTC)
                       if name in dates and value is not None else value
                       for name, value in row.items()} for row in rows[table.name]]
            if values:
                connection.execute(table.insert(), values)
            serial = "id" in table.columns and isinstance(table.columns["id"].type, Integer)
            if engine.dialect.name == "postgresql" and serial and values:
                # what a restored dump does: the next id follows the rows loaded
                connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT max(id) FROM {table.name}))")
    return rows


def read_rows(engine: Engine, names: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables `names`, by primary key, as the dump holds them."""
    tables = MetaData()
    tables.reflect(engine, only=sorted(names))
    with engine.connect() as connection:
        return {name: [{k: plain(v) for k, v in row._mapping.items()} for row in
                       connection.execute(select(table).order_by(*table.primary_key.columns))]
                for name, table in tables.tables.items()}


def same_columns(found: dict[str, list[dict[str, Any]]],
                 old: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`found` cut down to the columns the old rows had (later migrations may add some)."""
    return {name: [{k: row[k] for k in old[name][0]} if old[name] else row for row in rows]
            for name, rows in found.items()}


def assert_rows_kept(engine: Engine, old: dict[str, list[dict[str, Any]]]) -> None:
    """Every old row is there as it was (columns added since aside), but the job tally's:
    its rows of placed jobs are recounted per site and queue (0006), to the same totals
    and to what a scan of the jobs counts."""
    found = read_rows(engine, set(old))
    rest = {name: rows for name, rows in old.items() if name != "jobtally"}
    assert same_columns({name: found[name] for name in rest}, rest) == rest
    assert _tally_totals(found["jobtally"]) == _tally_totals(old["jobtally"])
    with Session(engine) as session:
        assert tally.placed(session) == placed_jobs(session)


def _tally_totals(rows: list[dict[str, Any]]) -> dict[tuple[int, str], tuple[int, int]]:
    totals: dict[tuple[int, str], tuple[int, int]] = {}
    for row in rows:
        jobs, events = totals.get((row["production_id"], row["state"]), (0, 0))
        totals[(row["production_id"], row["state"])] = (jobs + row["jobs"],
                                                         events + row["events"])
    return {key: value for key, value in totals.items() if value != (0, 0)}


def schema_of(engine: Engine) -> dict[str, Any]:
    """Everything the database says about its tables, in a comparable form."""
    present = inspect(engine)
    described: dict[str, Any] = {}
    for table in present.get_table_names():
        described[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                        for c in present.get_columns(table)],
            "primary_key": present.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted((tuple(k["constrained_columns"]), k["referred_table"],
                                    tuple(k["referred_columns"]))
                                   for k in present.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                               json.dumps(i.get("dialect_options", {}), sort_keys=True,
                                          default=str))
                              for i in present.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"])
                             for u in present.get_unique_constraints(table)),
        }
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            described["index definitions"] = sorted(connection.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")).all())
            described["table options"] = sorted(connection.execute(text(
                "SELECT relname, reloptions::text FROM pg_class WHERE relkind = 'r' AND "
                "relnamespace = 'public'::regnamespace")).all())
    else:
        with engine.connect() as connection:
            # the clauses of each CREATE, sorted: only their order and layout may differ
            # (SQLite appends a column that ALTER TABLE adds to the last line)
            described["definitions"] = sorted(
                (name, _clauses(sql)) for name, sql in connection.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")).all())
    return described


def _clauses(sql: str) -> tuple[list[str], list[str]]:
    """A CREATE statement's head, and its clauses (the commas outside parentheses) sorted."""
    opened, closed = sql.index("("), sql.rindex(")")
    return sql[:opened].split(), sorted(" ".join(clause.split()) for clause in
                                        re.split(r",(?![^()]*\))", sql[opened + 1:closed]))


def test_head_is_alembics_head_and_the_history_is_one_numbered_line() -> None:
    scripts = migrate.script()
    assert scripts.get_heads() == [revision.HEAD]
    numbers = [item["revision"] for item in migrate.history()]
    assert numbers == [f"{n:04d}" for n in range(1, len(numbers) + 1)]
    assert [item["down_revision"] for item in migrate.history()] == [None, *numbers[:-1]]


def test_models_and_migrations_agree(engine: Engine) -> None:
    """The migrations, run from nothing, make what the models describe: a model changed
    without its migration (`tower db revision`, see the README) fails here."""
    with engine.begin() as connection:
        command.upgrade(migrate.config(connection), "head")
    with engine.connect() as connection:
        assert migrate.differences(connection) == []
    with engine.begin() as connection:  # and the comparison sees a difference when there is one
        connection.exec_driver_sql("DROP INDEX ix_job_site_state")
    with engine.connect() as connection:
        assert [change[0] for change in migrate.differences(connection)] == ["add_index"]


def test_a_new_database_is_the_same_made_from_the_models_or_by_the_migrations(
        engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    create_schema(engine)
    if engine.dialect.name == "sqlite":
        other = make_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    else:
        other = make_engine(str(request.getfixturevalue("second_postgres_url")))
    try:
        with other.begin() as connection:
            command.upgrade(migrate.config(connection), "head")
        assert schema_of(engine) == schema_of(other)
        for made in (engine, other):
            with made.connect() as connection:
                assert revision.read(raw_cursor(connection)) == revision.HEAD
    finally:
        other.dispose()


@pytest.fixture
def second_postgres_url(postgres_url: str) -> Iterator[str]:
    """Another fresh database beside `postgres_url`'s, dropped afterwards."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN

    name = postgres_url.rsplit("/", 1)[1] + "_b"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_database_of_the_release_before_upgrades_in_place_and_runs_a_production(
        engine: Engine, database_url: str, tmp_path: Path,
        live_tower: Any) -> None:
    old = load_pre_migration_database(engine)
    assert {name for name, rows in old.items() if rows} >= {
        "production", "job", "attempt", "output", "dataset", "catalog_file", "replica",
        "jobevent", "jobtally", "pilot"}
    assert {row["state"] for row in old["job"]} == {state.value for state in JobState}
    config = write_home(tmp_path / "home", database_url)

    refused = tower(config, "status")
    assert refused.returncode == 6
    assert refused.stderr.splitlines() == [
        f"tower: database {redact(database_url)} has no schema revision (made before "
        f"gridtower's migrations), this gridtower needs {revision.HEAD}: run `tower db upgrade`"]

    upgraded = tower(config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.endswith(f"upgraded from before migrations to revision "
                                    f"{revision.HEAD}\n")
    assert_rows_kept(engine, old)
    with engine.connect() as connection:
        assert migrate.differences(connection) == []

    again = tower(config, "db", "upgrade", "--json")
    assert json.loads(again.stdout)["before"] == revision.HEAD
    status = tower(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    listed = {row["name"]: row for row in json.loads(status.stdout)["productions"]}
    assert set(listed) == {"calibration", "physics"}
    assert listed["calibration"]["states"] == {"done": 3}

    live: LiveTower = live_tower()
    live.submit(toy_production(tmp_path, name="after-upgrade", jobs=4, events=50))

    jobs = sqlmodel.select(Job.state)

    def new_jobs_done() -> bool:
        with Session(engine) as session:
            states = session.exec(jobs.where(col(Job.production_id) == 3)).all()
        return len(states) == 4 and set(states) == {JobState.DONE}

    live.drive(new_jobs_done, 120)
    # what the release before made and finished reads back the same
    finished = {job["id"] for job in old["job"] if job["production_id"] == 1}
    files = {row["id"] for row in old["catalog_file"] if row["job_id"] in finished}
    keep = {"job": lambda row: row["id"] in finished,
            "attempt": lambda row: row["job_id"] in finished,
            "catalog_file": lambda row: row["id"] in files,
            "replica": lambda row: row["file_id"] in files,
            "dataset": lambda row: row["production_id"] == 1}
    after = same_columns(read_rows(engine, set(keep)), old)
    for name, kept in keep.items():
        assert [row for row in after[name] if kept(row)] == [
            row for row in old[name] if kept(row)], name


@pytest.mark.one_database  # the check on SQLite: the tests above (a cursor, `tower status`)
def test_a_database_older_or_newer_than_the_code_is_refused_in_one_line(
        engine: Engine, database_url: str, tmp_path: Path) -> None:
    config = write_home(tmp_path / "home", database_url)
    create_schema(engine)
    older = migrate.script().get_revision(revision.HEAD).down_revision or "0000"
    old = (older, f"is at revision {older}, this gridtower needs {revision.HEAD}: run "
           "`tower db upgrade`", [["status"], ["run", "--until-done", "--timeout", "5"]])
    new = ("9999", f"is at revision 9999, this gridtower needs {revision.HEAD}: the database "
           "is newer than this gridtower",
           [["run", "--no-api", "--until-done", "--timeout", "5"], ["serve"]])
    for found, says, commands in (old, new):
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"),
                               {"v": found})
        for args in commands:
            result = tower(config, *args)
            assert result.returncode == 6, (args, result.stderr)
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and says in lines[0], (args, result.stderr)
            assert lines[0].startswith("tower: database ")
        with pytest.raises(SchemaError, match=re.escape(says)):
            Runtime.open(load_config(config))
    current = tower(config, "db", "current", "--json")
    assert current.returncode == 6 and json.loads(current.stdout)["revision"] == "9999"
    newer = tower(config, "db", "upgrade")
    assert newer.returncode == 6 and "newer than this gridtower" in newer.stderr
    with engine.connect() as connection:  # nothing was changed
        assert revision.read(raw_cursor(connection)) == "9999"


def test_a_pre_migration_database_missing_a_column_is_refused_and_left_alone(
        engine: Engine, database_url: str) -> None:
    load_pre_migration_database(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE jobtally")  # older still: made before the tally
        connection.exec_driver_sql('ALTER TABLE job DROP COLUMN budget_from')
    with pytest.raises(SchemaError, match=r"has no schema revision and lacks job\.budget_from"):
        migrate.upgrade(engine, database_url)
    present = inspect(engine)
    assert not present.has_table("alembic_version") and not present.has_table("jobtally")


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A copy of the shipped migrations, to add revisions to."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.LOCATION, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


#: A migration as a developer would write one: on SQLite, changing a column's type makes
#: Alembic copy the table (job, which attempts, outputs and catalog files refer to).
SECOND = '''"""job.message grows, and jobs get a note"""
import sqlalchemy as sa
from alembic import op

revision = "{number}"
down_revision = "{head}"


def upgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(length=100), nullable=True))
        batch_op.alter_column("message", type_=sa.String(length=800),
                              existing_type=sa.String(length=500))
'''


def test_a_migration_that_copies_a_table_keeps_its_rows_and_the_rows_referring_to_them(
        engine: Engine, database_url: str, scripts: Path) -> None:
    old = load_pre_migration_database(engine)
    number = f"{int(revision.HEAD) + 1:04d}"
    (scripts / "versions" / f"{number}_job_note.py").write_text(
        SECOND.format(number=number, head=revision.HEAD))
    done = migrate.upgrade(engine, redact(database_url), scripts)
    assert (done.before, done.after) == ("", number)
    assert_rows_kept(engine, old)
    present = inspect(engine)
    assert {c["name"]: c["type"].length for c in present.get_columns("job")
            if c["name"] in ("note", "message")} == {"note": 100, "message": 800}
    assert [k["referred_table"] for k in present.get_foreign_keys("attempt")] == ["job"]
    with engine.connect() as connection:
        assert revision.read(raw_cursor(connection)) == number


def test_tower_db_revision_writes_the_next_migration_from_the_models(
        engine: Engine, database_url: str, scripts: Path, tmp_path: Path) -> None:
    head_module = tmp_path / "revision.py"
    head_module.write_text(Path(revision.__file__).read_text())
    scratch = Table("scratch", SQLModel.metadata, Column("id", Integer, primary_key=True),
                    Column("name", AutoString(length=30), nullable=False))
    try:
        written = migrate.new_revision("Add the scratch table", scripts, head_module)
    finally:
        SQLModel.metadata.remove(scratch)
    number = f"{int(revision.HEAD) + 1:04d}"
    assert written.name == f"{number}_add_the_scratch_table.py"
    source = written.read_text()
    assert "op.create_table('scratch'" in source
    assert "sa.String(length=30)" in source and "sqlmodel" not in source
    assert f'HEAD = "{number}"' in head_module.read_text()
    done = migrate.upgrade(engine, redact(database_url), scripts)  # it runs, on either database
    assert done.after == number and inspect(engine).has_table("scratch")


def test_the_check_needs_only_a_db_api_cursor(engine: Engine, database_url: str) -> None:
    """What a command that reads without SQLAlchemy uses: tower.model.revision on the
    driver's own connection (sqlite3, psycopg), and importing it loads no SQLAlchemy."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, tower.model.revision; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('sqlalchemy', 'sqlmodel', 'alembic')))"],
        capture_output=True, text=True, check=True, timeout=60)
    assert imported.stdout.strip() == "[]"

    def cursor() -> Any:
        if engine.dialect.name == "sqlite":
            return sqlite3.connect(engine.url.database or "", isolation_level=None).cursor()
        import psycopg

        return psycopg.connect(database_url, autocommit=True).cursor()

    assert revision.check(cursor(), "here") == revision.EMPTY
    create_schema(engine)
    assert revision.check(cursor(), "here") == revision.CURRENT
    for statement, says in (("UPDATE alembic_version SET version_num = '9999'", "newer"),
                            ("DROP TABLE alembic_version", "no schema revision")):
        with engine.begin() as connection:
            connection.exec_driver_sql(statement)
        with pytest.raises(SchemaError, match=f"^database here .*{says}"):
            revision.check(cursor(), "here")


def test_two_towers_starting_on_a_new_database_make_it_once(database_url: str) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def start(engine: Engine) -> None:
        try:
            create_schema(engine)
        except BaseException as error:  # noqa: BLE001 (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with engines[0].connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (revision.HEAD,)]
        assert migrate.differences(connection) == []
    for engine in engines:
        engine.dispose()
