"""Where a pilot takes its messages from: one class per broker, the same three calls."""

from __future__ import annotations

from typing import Any, Protocol

from pilots.client import TowerClient


class Source(Protocol):
    def get(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` messages ({"id", "job", "attempt", "walltime"}), or none for now."""

    def ack(self, messages: list[dict[str, Any]]) -> None:
        """These messages are handled (claimed, or refused by the tower)."""

    def release(self, messages: list[dict[str, Any]]) -> None:
        """Give these messages back, unhandled, for another pilot."""

    def close(self) -> None:
        """Acknowledge what is pending and disconnect."""


class HttpSource:
    """The database queue, through the tower's API. Acks ride on the next lease call."""

    def __init__(self, client: TowerClient, queue: str) -> None:
        self.client = client
        self.queue = queue
        self._acks: list[int] = []

    def get(self, limit: int) -> list[dict[str, Any]]:
        answer = self.client.call("lease", {"queue": self.queue, "max": limit, "ack": self._acks})
        self._acks = []
        return list(answer["messages"])

    def ack(self, messages: list[dict[str, Any]]) -> None:
        self._acks.extend(message["id"] for message in messages)

    def release(self, messages: list[dict[str, Any]]) -> None:
        if messages:
            self.client.call("release", {"ids": [message["id"] for message in messages]})

    def close(self) -> None:
        if self._acks:
            self.get(0)


SOURCES = {"http": HttpSource}


def open_source(kind: str, client: TowerClient, queue: str) -> Source:
    if kind not in SOURCES:
        raise ValueError(f"unknown message source {kind!r} (known: {', '.join(SOURCES)})")
    return SOURCES[kind](client, queue)
