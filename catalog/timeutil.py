"""Time as the tower stores it: aware UTC datetimes (SQLModel stores them as UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def jsonable(value: Any) -> Any:
    """`json.dumps`'s default for what the tower's answers hold: times as ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
