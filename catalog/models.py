"""The catalog's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, UniqueConstraint
from sqlmodel import Field, SQLModel

from tower.models import json_column
from tower.timeutil import utcnow


class Dataset(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=300)
    production_id: int | None = Field(default=None, foreign_key="production.id")
    #: Resolved parameters, software, template hash: how the data was made.
    meta: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)


class CatalogFile(SQLModel, table=True):
    __tablename__ = "catalog_file"
    # One registration per job output, whatever was retried or reported twice.
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    lfn: str = Field(unique=True, max_length=1000)
    name: str = Field(max_length=255)
    size: int = Field(sa_type=BigInteger)
    adler32: str = Field(max_length=8)
    job_id: int | None = Field(default=None, foreign_key="job.id")
    attempt: int | None = None
    meta: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)


class Replica(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("file_id", "destination"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="catalog_file.id", index=True)
    destination: str = Field(max_length=100)
    url: str = Field(max_length=2000)
    created_at: datetime = Field(default_factory=utcnow)
