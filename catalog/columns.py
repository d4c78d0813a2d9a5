"""Column types the tables of the catalog and of the tower share: JSON documents, and states."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import JSON, Column
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field

#: JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")


def json_column() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


def state_column(states: type[enum.StrEnum], default: Any = None, index: bool = False) -> Any:
    """A state stored as its value in a VARCHAR (no database enum type to migrate)."""
    column_type = SAEnum(states, native_enum=False, create_constraint=False, length=20,
                         values_callable=lambda members: [member.value for member in members])
    return Field(default=default, sa_column=Column(column_type, nullable=False, index=index))
