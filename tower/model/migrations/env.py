"""Alembic's environment for gridtower: the connection comes from tower/model/migrate.py
(`config.attributes["connection"]`), already in the transaction the migration runs in."""

from __future__ import annotations

from alembic import context

from tower.model import migrate

connection = context.config.attributes["connection"]
context.configure(connection=connection, **migrate.options(connection))
context.run_migrations()
