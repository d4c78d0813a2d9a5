"""The catalog's tables."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from catalog.columns import json_column, state_column
from catalog.timeutil import utcnow


class ReplicaState(enum.StrEnum):
    GOOD = "good"        # matches the catalog's size and adler32 when last checked
    BAD = "bad"          # differs, or was superseded by a newer attempt's output
    MISSING = "missing"  # absent at its destination when last checked


class Dataset(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=300)
    production_id: int | None = Field(default=None, foreign_key="production.id")
    #: Resolved parameters, software, template hash: how the data was made.
    meta: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)


class CatalogFile(SQLModel, table=True):
    __tablename__ = "catalog_file"
    __table_args__ = (
        # One registration per job output, whatever was retried or reported twice.
        UniqueConstraint("job_id", "name"),
        # a dataset's files in LFN order: ls, export, verify
        Index("ix_catalog_file_dataset_lfn", "dataset_id", "lfn"),
        # metadata conditions of `find` are JSONB containment, which this index serves
        Index("ix_catalog_file_meta", "meta", postgresql_using="gin",
              postgresql_ops={"meta": "jsonb_path_ops"}).ddl_if(dialect="postgresql"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id")
    #: Logical file name, `/DATASET/NAME`: unique in the whole catalog.
    lfn: str = Field(unique=True, max_length=1000)
    name: str = Field(max_length=255)
    size: int = Field(sa_type=BigInteger)
    adler32: str = Field(max_length=8)
    events: int | None = None
    job_id: int | None = Field(default=None, foreign_key="job.id")
    #: The attempt whose output this is; a newer attempt's output replaces it in place.
    attempt: int
    meta: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)


class Replica(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("file_id", "destination"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="catalog_file.id")  # indexed by the unique constraint
    destination: str = Field(max_length=100)
    #: Relative to the destination's root: what its Transfer backend is given.
    path: str = Field(max_length=1000)
    url: str = Field(max_length=2000)
    state: ReplicaState = state_column(ReplicaState, ReplicaState.GOOD)
    #: When the copy was last compared with the catalog (by the stager or `verify`).
    checked_at: datetime | None = None
    error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)


class FileParent(SQLModel, table=True):
    """Lineage: one file a cataloged file was made from, as it was when its job read it.
    The job and attempt that made the file are the file's own `job_id` and `attempt`."""

    __tablename__ = "file_parent"
    __table_args__ = (UniqueConstraint("file_id", "lfn"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="catalog_file.id")  # indexed by the unique constraint
    #: The parent's entry, while the catalog holds it (None: a file from elsewhere).
    parent_id: int | None = Field(default=None, foreign_key="catalog_file.id", index=True)
    lfn: str = Field(max_length=1000)
    adler32: str = Field(max_length=8)
