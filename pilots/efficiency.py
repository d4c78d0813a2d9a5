"""How long a pilot's slots stand idle between payloads: the pilot's own overhead.

A slot freed by a payload that ended is taken by the next payload to start (first
freed, first taken); the time between is the slot's gap: reporting, fetching and
claiming the next job, preparing it and starting its process. When the queue has run
dry the gap includes the wait for work, so the median tells the overhead and the tail
tells the starvation.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque


class SlotGaps:
    """Gaps between payload ends and the starts that reuse their slots; thread-safe."""

    def __init__(self) -> None:
        self._freed: deque[float] = deque()
        self._gaps: list[float] = []
        self._lock = threading.Lock()

    def ended(self) -> None:
        """A payload's process ended: its slot is free from now."""
        with self._lock:
            self._freed.append(time.monotonic())

    def started(self) -> None:
        """A payload's process started, in the slot freed longest ago, if any."""
        with self._lock:
            if self._freed:
                self._gaps.append(time.monotonic() - self._freed.popleft())

    def summary(self) -> str:
        """Count, median, 99th percentile, mean and max of the gaps, for the pilot's last
        log line."""
        with self._lock:
            gaps = sorted(self._gaps)
        if not gaps:
            return "no slot was reused"
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        return (f"slot gaps: {len(gaps)}, median {1000 * statistics.median(gaps):.2f} ms, "
                f"p99 {1000 * p99:.2f} ms, mean {1000 * statistics.fmean(gaps):.2f} ms, "
                f"max {1000 * gaps[-1]:.2f} ms")
