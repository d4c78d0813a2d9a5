"""Time as the tower stores it: aware UTC datetimes (SQLModel stores them as UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
