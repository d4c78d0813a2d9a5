"""What each payload's process tree uses (peak memory, CPU time), and its memory held to a limit.

Two ways, chosen once per pilot by trying (`open_meter`), and named in the pilot's log:

- **cgroup v2**: when the pilot may make child cgroups with the memory controller (a
  delegated cgroup, the pilot alone in it), each payload gets its own: `memory.max` is
  its limit (the kernel kills the whole group, `memory.oom.group`), `memory.peak` and
  `cpu.stat` say what the tree used, every descendant included.
- **polling**: one thread reads /proc every POLL seconds for all payloads at once; a
  payload's tree is its session (each payload starts one) plus its descendants. Its
  memory is the sum of their resident anonymous pages (shared libraries are counted
  once in no process); over its limit, the tree is SIGKILLed. The CPU time is the
  kernel's rusage of the payload and the descendants it waited for. A spike shorter
  than POLL can escape the sum; the largest single process's peak (`ru_maxrss`) is
  taken too. A payload is summed from its first POLL on: short payloads (most of a
  pilot of short jobs) cost no read of /proc at all, and a pilot whose payloads all
  are younger than POLL skips the read.

A payload's limit is its memory request grown by the site's tolerance; a payload
without a request is held to the pilot's whole memory (its sum is what the batch
system would kill the pilot and all its payloads for), or to nothing when the pilot
does not know its memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

#: Seconds between two reads of /proc by the polling meter.
POLL = 0.2
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
TICKS = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: `memory_watch` settings: auto tries cgroup v2, then polling.
WATCHES = ("auto", "cgroup", "poll", "off")


@dataclass
class Usage:
    """What a payload's tree used; None where this meter cannot tell."""

    peak_mb: float | None = None
    cpu_seconds: float | None = None
    #: Killed for going over its memory limit.
    over_limit: bool = False


class Meter(Protocol):
    #: How it measures, for the pilot's log.
    kind: str

    def start(self, key: tuple[int, int], pid: int, limit_mb: float | None) -> None:
        """Watch the tree of `pid` (a session leader, just started) under `limit_mb`."""

    def stop(self, key: tuple[int, int]) -> Usage:
        """The payload ended (reaped): what its tree used."""

    def close(self) -> None:
        """No more payloads: release what the meter holds."""


class NoMeter:
    """Measures nothing beyond the rusage of the payload; enforces nothing."""

    kind = "off (rusage of the payload only, memory not enforced)"

    def start(self, key: tuple[int, int], pid: int, limit_mb: float | None) -> None:
        pass

    def stop(self, key: tuple[int, int]) -> Usage:
        return Usage()

    def close(self) -> None:
        pass


@dataclass
class _Watched:
    pid: int
    limit_mb: float | None
    #: When it started (time.monotonic()).
    since: float
    peak_mb: float = 0.0
    over_limit: bool = False


class PollingMeter:
    """One thread reading /proc for every watched payload; see the module's doc."""

    kind = f"polling /proc every {POLL}s"

    def __init__(self, period: float = POLL) -> None:
        self._period = period
        self._watched: dict[tuple[int, int], _Watched] = {}
        self._lock = threading.Lock()
        #: Wakes the thread when it idles without payloads; not while it samples.
        self._wake = threading.Condition(self._lock)
        self._closed = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="meter").start()

    def start(self, key: tuple[int, int], pid: int, limit_mb: float | None) -> None:
        with self._wake:
            self._watched[key] = _Watched(pid, limit_mb, time.monotonic())
            self._wake.notify()

    def stop(self, key: tuple[int, int]) -> Usage:
        with self._lock:
            watched = self._watched.pop(key, None)
        if watched is None:
            return Usage()
        return Usage(watched.peak_mb or None, None, watched.over_limit)

    def close(self) -> None:
        with self._wake:
            self._closed.set()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._watched and not self._closed.is_set():
                    self._wake.wait()
            if self._closed.is_set():
                return
            try:
                self.sample()
            except Exception:  # the thread's boundary: the next sample tries again
                log.exception("reading /proc failed")
            # payloads starting meanwhile wait for the next sample: one read per period
            if self._closed.wait(self._period):
                return

    def sample(self) -> None:
        """Read every process once, add up the tree of each payload older than a period,
        kill trees over limits."""
        young = time.monotonic() - self._period
        with self._lock:
            watched = [item for item in self._watched.values() if item.since <= young]
        if not watched:
            return
        parents: dict[int, list[int]] = {}
        sessions: dict[int, list[int]] = {}
        for pid, parent, session in _processes():
            parents.setdefault(parent, []).append(pid)
            sessions.setdefault(session, []).append(pid)
        for item in watched:
            tree = set(sessions.get(item.pid, ())) | _descendants(item.pid, parents)
            used = sum(_anonymous_mb(pid) for pid in tree)
            item.peak_mb = max(item.peak_mb, used)
            if item.limit_mb is not None and used > item.limit_mb and not item.over_limit:
                item.over_limit = True
                log.warning("payload pid=%d uses %.0f MB, over its limit of %.0f MB: killed",
                            item.pid, used, item.limit_mb)
                _kill(item.pid, tree)


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent, session) of every process that can be read."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = _read(f"/proc/{name}/stat")
        except OSError:  # it ended meanwhile
            continue
        # the command name may hold spaces and parentheses: the fields follow the last ')'
        fields = text[text.rindex(b")") + 2:].split()
        found.append((int(name), int(fields[1]), int(fields[3])))
    return found


def _read(path: str) -> bytes:
    """A small /proc file; os.open, not open: half the cost, paid for every process."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.read(descriptor, 1024)
    finally:
        os.close(descriptor)


def _descendants(root: int, children: dict[int, list[int]]) -> set[int]:
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _anonymous_mb(pid: int) -> float:
    """Resident pages that are the process's own (resident minus file and shared pages)."""
    try:
        fields = _read(f"/proc/{pid}/statm").split()
    except OSError:
        return 0.0
    return max(0, int(fields[1]) - int(fields[2])) * PAGE_MB


def _kill(session: int, tree: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    for pid in tree:  # those that left the payload's process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class CgroupMeter:
    """A child cgroup (v2) per payload under the pilot's own; see the module's doc."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.kind = f"cgroup v2 memory controller under {base}"
        self._groups: dict[tuple[int, int], Path] = {}

    def start(self, key: tuple[int, int], pid: int, limit_mb: float | None) -> None:
        group = self.base / f"payload-{key[0]}.{key[1]}"
        group.mkdir(exist_ok=True)
        if limit_mb is not None:
            (group / "memory.max").write_text(str(int(limit_mb * 2**20)))
        with contextlib.suppress(OSError):  # no swap, or no such file: nothing to stop
            (group / "memory.swap.max").write_text("0")
        (group / "memory.oom.group").write_text("1")
        # just after exec: a payload forks nothing before its interpreter has started
        (group / "cgroup.procs").write_text(str(pid))
        self._groups[key] = group

    def stop(self, key: tuple[int, int]) -> Usage:
        group = self._groups.pop(key, None)
        if group is None:
            return Usage()
        usage = Usage()
        with contextlib.suppress(OSError, ValueError):
            usage.peak_mb = int((group / "memory.peak").read_text()) / 2**20
        with contextlib.suppress(OSError, ValueError):
            usage.cpu_seconds = _keyed(group / "cpu.stat")["usage_usec"] / 1e6
        with contextlib.suppress(OSError, ValueError, KeyError):
            usage.over_limit = _keyed(group / "memory.events")["oom_kill"] > 0
        _remove(group)
        return usage

    def close(self) -> None:
        # the pilot's own cgroups go with its batch job's (it cannot leave them: their
        # parent now has controllers enabled, so it may hold no process)
        for key in list(self._groups):
            _remove(self._groups.pop(key))


def _keyed(path: Path) -> dict[str, int]:
    return {name: int(value) for name, value in
            (line.split() for line in path.read_text().splitlines() if line.strip())}


def _remove(group: Path) -> None:
    """Kill what is left in a payload's cgroup, then remove it."""
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # its last processes are still dying
            threading.Event().wait(0.02)
    log.warning("cannot remove cgroup %s", group)


def delegated_cgroup() -> Path | None:
    """A cgroup v2 under which this pilot may make payload cgroups with the memory
    controller, made by trying: the pilot moves into a child of its own cgroup, whose
    children get the memory controller. None (and everything undone) if any step fails."""
    try:
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    own = CGROUP_ROOT / line[3:].strip().lstrip("/")
    if not (CGROUP_ROOT / "cgroup.controllers").exists():  # v1 or hybrid: no v2 memory
        return None
    pilot = own / f"gridtower-pilot-{os.getpid()}"
    try:
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            return None
        pilot.mkdir()
        (pilot / "leaf").mkdir()
        # the "no internal processes" rule: the pilot leaves the cgroup whose children
        # get controllers; this fails if anything else still runs there with it
        (pilot / "leaf" / "cgroup.procs").write_text(str(os.getpid()))
        if "memory" not in (own / "cgroup.subtree_control").read_text().split():
            (own / "cgroup.subtree_control").write_text("+memory")
        (pilot / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        log.debug("no delegated cgroup v2 memory controller: %s", exc)
        with contextlib.suppress(OSError):
            (own / "cgroup.procs").write_text(str(os.getpid()))
        for path in (pilot / "leaf", pilot):
            with contextlib.suppress(OSError):
                path.rmdir()
        return None
    return pilot


def open_meter(watch: str) -> Meter:
    """The meter `watch` asks for (pilots.meter.WATCHES); `auto` tries cgroup v2 first."""
    if watch == "off":
        return NoMeter()
    if watch in ("auto", "cgroup"):
        base = delegated_cgroup()
        if base is not None:
            return CgroupMeter(base)
        if watch == "cgroup":
            log.warning("no delegated cgroup v2 memory controller: polling /proc instead")
    return PollingMeter()
