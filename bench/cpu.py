"""CPU seconds spent by each part of a run, read from /proc while it goes.

A part is a set of processes recognised by their command line (the tower's loops, its
API, the pilots and their payloads, PostgreSQL, RabbitMQ). Processes come and go
during a run (pilots end, payloads last milliseconds), so a thread samples /proc
every `period` seconds and keeps the largest user+system time seen for each process;
a payload that lives between two samples is counted with its pilot, which waited
for it (a child's time is added to its parent's `cutime` when it is reaped).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")

@dataclass(frozen=True)
class Part:
    #: Whether a process's command line (arguments joined by spaces) belongs to the part.
    matches: Callable[[str], bool]
    #: Count the children it reaped (a pilot's payloads; not a server's own workers,
    #: which are counted themselves while they live).
    with_children: bool = False


Parts = dict[str, Part]


def tower_command(line: str, command: str) -> bool:
    words = line.split()
    return any(word.endswith(("tower.cli", "/tower")) for word in words[:3]) and \
        command in words


GRIDTOWER: Parts = {
    "tower": Part(lambda line: tower_command(line, "run")),
    "api": Part(lambda line: tower_command(line, "serve")),
    "pilots": Part(lambda line: "pilots.main" in line or "/pilot " in line, with_children=True),
    "postgresql": Part(lambda line: line.startswith("postgres")),
    "rabbitmq": Part(lambda line: "beam.smp" in line),
}


def _processes() -> dict[int, tuple[str, int, float, float]]:
    """pid -> (command line, parent pid, own CPU seconds, reaped children's CPU seconds)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        own = (int(fields[11]) + int(fields[12])) / TICKS
        children = (int(fields[13]) + int(fields[14])) / TICKS
        found[int(entry.name)] = (line, int(fields[1]), own, children)
    return found


class CpuMeter:
    """Samples the CPU time of `parts` from `start()` to `stop()`; `seconds()` per part."""

    def __init__(self, parts: Parts, period: float = 0.25) -> None:
        self.parts = parts
        self.period = period
        self._base: dict[int, tuple[float, float]] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_done, daemon=True,
                                        name="cpu-meter")

    def start(self) -> None:
        # what processes alive now spent before the run is not the run's
        self._base = {pid: (own, children)
                      for pid, (_, _, own, children) in _processes().items()}
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._sample()
        return self.seconds()

    def seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(self.parts, 0.0)
        for part, spent in self._last.values():
            totals[part] += spent
        return {part: round(total, 2) for part, total in totals.items()}

    def _sample_until_done(self) -> None:
        while not self._done.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        processes = _processes()
        for pid, (line, parent, own, children) in processes.items():
            name = self._part(line)
            if name is None and parent in processes:
                # a payload still running: its own time, under its pilot's part
                name = self._part(processes[parent][0])
                children = 0.0
            if name is not None:
                own_before, children_before = self._base.get(pid, (0.0, 0.0))
                spent = own - own_before
                if self.parts[name].with_children:
                    spent += children - children_before
                # the largest seen: an exiting process reads as zero in its last moments
                if spent > self._last.get(pid, (name, 0.0))[1]:
                    self._last[pid] = (name, spent)

    def _part(self, line: str) -> str | None:
        return next((name for name, part in self.parts.items() if part.matches(line)), None)
