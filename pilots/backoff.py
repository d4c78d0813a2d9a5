"""Waiting between retries of something unreachable: a delay that doubles up to a ceiling."""

from __future__ import annotations

import time


class Backoff:
    """Tracks one outage: when it began, and when the next try is due."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial
        #: time.monotonic() of the first failure of the current outage, or None.
        self.since: float | None = None
        self.next_try = 0.0

    def failed(self) -> float:
        """Record a failure; returns the seconds until the next try."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        delay = self.delay
        self.next_try = now + delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def succeeded(self) -> None:
        self.delay, self.since, self.next_try = self.initial, None, 0.0

    def due(self) -> bool:
        """Whether the next try may happen now."""
        return time.monotonic() >= self.next_try

    def outage(self) -> float:
        """Seconds since the current outage began (0 when there is none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since
