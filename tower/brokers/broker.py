"""The `Broker` seam: how the tower hands jobs to the pilots of a site.

The database is the truth; a broker only delivers. A message names a job and
the attempt it is for; a pilot claims the job over HTTP before running it, so
a duplicate or stale message is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from sqlalchemy import Engine

from sites.registry import resolve

#: URL scheme -> backend.
BROKERS = {
    "database": "tower.brokers.dbqueue:DatabaseQueue",
    "amqp": "tower.brokers.amqp:AmqpBroker",
    "amqps": "tower.brokers.amqp:AmqpBroker",
}


class Message(TypedDict):
    job: int
    attempt: int
    #: Seconds the job may run; a pilot with less time left does not take it.
    walltime: int


#: A message's job and attempt: what makes it current or stale.
MessageKey = tuple[int, int]


@dataclass(frozen=True)
class PilotSource:
    """How a pilot consumes one queue: handed to the pilot program by the factory."""

    #: The pilot's source name (pilots.sources.SOURCES).
    kind: str
    queue: str
    #: `--source-option` settings, safe to show on a command line.
    options: dict[str, str] = field(default_factory=dict)
    #: Environment variables for the pilot: secrets never go on a command line.
    environment: dict[str, str] = field(default_factory=dict)


class Broker(Protocol):
    def publish(self, queue: str, messages: list[Message]) -> None:
        """Store `messages` durably in `queue`; return only once the broker confirmed all.

        Raises BackendError when the broker is unreachable or refuses them.
        """

    def depth(self, queue: str) -> int | None:
        """Messages waiting in `queue` (not taken by a pilot), or None if unknown."""

    def discard(self, queue: str, stale: Callable[[list[Message]], set[MessageKey]]) -> int:
        """Remove the waiting messages of `queue` that `stale` names (by job and attempt),
        given all of them; the others stay, in their order. Returns how many went.

        Raises BackendError when the broker is unreachable.
        """

    def pilot_source(self, queue: str, url: str | None = None) -> PilotSource:
        """How a pilot consumes `queue`; `url` is the broker's address as the site sees it."""

    def reach(self, timeout: float) -> None:
        """Show the broker answers now, on a connection of its own (readiness: a loop's
        connection busy or in its backoff says nothing). Raises BackendError if not."""

    def close(self) -> None:
        """Release connections."""


def queue_name(site: str, queue: str) -> str:
    """The broker queue of one site's queue."""
    return f"{site}.{queue}"


def open_broker(url: str, engine: Engine, options: dict[str, Any], source: str) -> Broker:
    """The broker for `url` ("database", "amqp://...", "amqps://..."); `options` are its
    `broker_options`, checked by the backend, errors naming `source`."""
    scheme = url.split(":", 1)[0] if "://" in url else url
    backend: Any = resolve(BROKERS, scheme, "broker")
    return backend(url, engine, options, source)  # type: ignore[no-any-return]
