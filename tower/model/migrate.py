"""Alembic, configured here rather than by an alembic.ini: the migrations ship inside the
package (tower/model/migrations/), and every command runs them on the tower's own engine.

- upgrade: `tower db upgrade`; a database made before migrations is adopted first
- stamp: a new database made from the models is marked at the head revision
- history, differences: `tower db history`, and the test that models and migrations agree
- new_revision: `tower db revision`, for developers (README, *Adding a migration*)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect
from sqlmodel import Session, SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from tower.errors import SchemaError
from tower.model import revision
from tower.model.db import lock_schema, make_at_head, raw_cursor

#: The folder of env.py and versions/ (a real directory: the package is never zipped).
LOCATION = Path(str(files("tower.model") / "migrations"))

#: The first revision: the schema of the last gridtower before migrations.
BASELINE = "0001"


def config(connection: Connection | None = None, location: Path = LOCATION) -> Config:
    settings = Config()
    settings.set_main_option("script_location", str(location))
    settings.attributes["connection"] = connection
    return settings


@cache
def script(location: Path = LOCATION) -> ScriptDirectory:
    return ScriptDirectory.from_config(config(location=location))


def stamp(connection: Connection) -> None:
    """Mark the database at the head revision (its tables are the models')."""
    MigrationContext.configure(connection).stamp(script(), "head")


@dataclass
class Upgraded:
    before: str | None  # None: a new database; "": one made before migrations
    after: str


def upgrade(engine: Engine, where: str, location: Path = LOCATION) -> Upgraded:
    """Bring the database to the head revision in one transaction (on SQLite with foreign
    keys off, as batch ALTERs copy tables, and checked after). A new database is made at
    head from the models; a database newer than this gridtower raises SchemaError.
    `location`: other migrations than the shipped ones (tests, `tower db revision`)."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":  # only outside a transaction
            connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA foreign_keys=OFF")
        with connection.begin():
            lock_schema(connection)
            before = revision.read(raw_cursor(connection))
            head = script(location).get_current_head()
            assert head is not None
            if before is None and location == LOCATION:  # other scripts: run from nothing
                make_at_head(connection)
                return Upgraded(None, head)
            known = {rev.revision for rev in script(location).walk_revisions()}
            if before and before not in known:
                raise SchemaError(
                    f"database {where} is at revision {before}, which no migration of this "
                    f"gridtower knows (it goes up to {head}): the database is newer than "
                    "this gridtower (or not gridtower's); run the gridtower that upgraded it")
            new_tally = before == "" and not inspect(connection).has_table("jobtally")
            if before == "":
                adopt(connection, where, location)
            command.upgrade(config(connection, location), "head")
            if connection.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise SchemaError(f"database {where}: the upgrade would break "
                                      f"{len(broken)} foreign keys (first in {broken[0][0]}); "
                                      "nothing was changed")
            if new_tally:  # a database from before the tally: count its jobs once
                from tower.model import tally

                with Session(bind=connection) as session:
                    tally.rebuild(session)
                    session.flush()
            return Upgraded(before, head)


def adopt(connection: Connection, where: str, location: Path = LOCATION) -> None:
    """A database gridtower made before migrations: the first migration makes the tables it
    lacks (as those releases did at start) and stamps it, once every column of the first
    migration is there; otherwise it raises SchemaError naming what is missing."""
    command.upgrade(config(connection, location), BASELINE)
    present = inspect(connection)
    lacking = [f"{table}.{column}" for table, columns in baseline_columns(location).items()
               for column in sorted(columns - {c["name"] for c in present.get_columns(table)})]
    if lacking:
        raise SchemaError(
            f"database {where} has no schema revision and lacks {', '.join(lacking[:5])}"
            f"{' ...' if len(lacking) > 5 else ''}: a gridtower older than the first "
            "migration made it, and no migration leads from there; nothing was changed")


@cache
def baseline_columns(location: Path = LOCATION) -> dict[str, frozenset[str]]:
    """The columns of each table the first migration makes (made in a scratch database)."""
    scratch = create_engine("sqlite://")
    with scratch.begin() as connection:
        command.upgrade(config(connection, location), BASELINE)
        present = inspect(connection)
        columns = {table: frozenset(c["name"] for c in present.get_columns(table))
                   for table in present.get_table_names() if table != "alembic_version"}
    scratch.dispose()
    return columns


def history(location: Path = LOCATION) -> list[dict[str, Any]]:
    """Every migration, oldest first."""
    return [{"revision": rev.revision, "down_revision": rev.down_revision,
             "message": rev.doc, "head": rev.is_head}
            for rev in reversed(list(script(location).walk_revisions()))]


def including(dialect: str) -> Callable[..., bool]:
    """Alembic's filter of what to compare: leave out an index made only on another dialect
    (the catalog's GIN index is PostgreSQL's)."""
    def include(obj: Any, name: str | None, type_: str, reflected: bool,
                compare_to: Any) -> bool:
        only = getattr(obj, "_ddl_if", None)
        return not (type_ == "index" and only is not None
                    and only.dialect not in (None, dialect))
    return include


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write types as plain SQLAlchemy ones in a new migration, so it does not depend on how
    SQLModel or gridtower spell them later."""
    if type_ != "type":
        return False
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})"
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if "postgresql" in getattr(obj, "_variant_mapping", {}):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def options(connection: Connection) -> dict[str, Any]:
    """How migrations run and compare, for env.py and `differences` alike."""
    return {"target_metadata": SQLModel.metadata, "render_as_batch": True,
            "include_object": including(connection.dialect.name),
            "render_item": render_item, "compare_type": True, "transactional_ddl": True}


def differences(connection: Connection) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models (nothing, at
    head: a model changed without its migration shows here)."""
    context = MigrationContext.configure(connection, opts=options(connection))
    return list(compare_metadata(context, SQLModel.metadata))


def new_revision(message: str, location: Path = LOCATION,
                 head_module: Path = Path(revision.__file__)) -> Path:
    """Write the next migration from what autogenerate finds between the models and a
    scratch SQLite database at head, and move HEAD in `head_module` (tower/model/revision.py)
    to it. Returns the migration's path."""
    head = script(location).get_current_head()
    assert head is not None
    number = f"{int(head) + 1:0{len(head)}d}"
    scratch = create_engine("sqlite://")
    with scratch.begin() as connection:
        command.upgrade(config(connection, location), "head")
        written = command.revision(config(connection, location), message, autogenerate=True,
                                   rev_id=number)
    scratch.dispose()
    script.cache_clear()
    head_module.write_text(re.sub(r'^HEAD = "\d+"$', f'HEAD = "{number}"',
                                  head_module.read_text(), flags=re.MULTILINE))
    assert written is not None and not isinstance(written, list)
    return Path(written.path)
