"""Where a pilot takes its messages from: one class per broker, the same four calls.

A source is chosen by the name the tower hands the pilot (`--source`); the
registry maps it to "module:Class", imported only when used, so a pilot at a
database-queue site never needs the AMQP client.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any, Protocol

from pilots.client import TowerClient, TowerRefused

log = logging.getLogger(__name__)

#: Source name -> "module:Class".
SOURCES = {
    "http": "pilots.sources:HttpSource",
    "amqp": "pilots.amqp:AmqpSource",
}


class SourceLost(RuntimeError):
    """The source has been unreachable for longer than the pilot's patience."""


class Source(Protocol):
    def get(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` messages ({"id", "job", "attempt", "walltime"}), or none for now.

        Called on every turn of the pilot's loop, with limit 0 when every slot
        is busy, so that a source can keep its connection alive and hold no
        message it cannot run. Raises SourceLost when the source is gone for good.
        """

    def ack(self, messages: list[dict[str, Any]]) -> None:
        """These messages are handled (claimed, or refused by the tower)."""

    def release(self, messages: list[dict[str, Any]]) -> None:
        """Give these messages back, unhandled, for another pilot."""

    def wait(self, timeout: float) -> None:
        """Block up to `timeout` seconds, or less once a message may be ready or
        `interrupt()` was called."""

    def interrupt(self) -> None:
        """End a `wait` now; safe to call from any thread and from a signal handler."""

    def close(self) -> None:
        """Acknowledge what is pending, give back what is held, disconnect. Idempotent."""


class HttpSource:
    """The database queue, through the tower's API. Acks ride on the next lease call."""

    def __init__(self, client: TowerClient, queue: str, options: dict[str, str],
                 patience: float) -> None:
        if options:
            raise ValueError(f"source option {sorted(options)[0]!r}: the http source takes none")
        self.client = client
        self.queue = queue
        self._acks: list[int] = []
        self._interrupted = threading.Event()

    def get(self, limit: int) -> list[dict[str, Any]]:
        if limit == 0 and not self._acks:
            return []
        answer = self.client.call("lease", {"queue": self.queue, "max": limit, "ack": self._acks})
        self._acks = []
        return list(answer["messages"])

    def ack(self, messages: list[dict[str, Any]]) -> None:
        self._acks.extend(message["id"] for message in messages)

    def release(self, messages: list[dict[str, Any]]) -> None:
        if messages:
            self.client.call("release", {"ids": [message["id"] for message in messages]})

    def wait(self, timeout: float) -> None:
        # the database queue is polled: only an interrupt shortens the wait
        self._interrupted.wait(timeout)
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        try:
            self.get(0)
        except TowerRefused as exc:  # unacknowledged leases expire and the claim decides
            log.warning("closing the queue %s: %s", self.queue, exc)


def open_source(kind: str, client: TowerClient, queue: str, options: dict[str, str],
                patience: float) -> Source:
    """The source named `kind`; raises ValueError for an unknown one or bad options."""
    if kind not in SOURCES:
        raise ValueError(f"source: unknown message source {kind!r} "
                         f"(known: {', '.join(SOURCES)})")
    module, _, name = SOURCES[kind].partition(":")
    source: Any = getattr(importlib.import_module(module), name)
    return source(client, queue, options, patience)  # type: ignore[no-any-return]
