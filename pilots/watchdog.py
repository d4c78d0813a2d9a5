"""A pilot's watchdog: its payloads' process groups end with the pilot, SIGKILL included.

Each payload runs in a session (and process group) of its own, so a batch system
that signals only the pilot's process group (the local one, SLURM without
cgroups, condor) misses them, and a pilot killed with SIGKILL cannot stop them.
The watchdog runs in a session of its own, so such a signal misses it too; it
reads from a pipe the process groups the pilot starts (`+PGID`) and reaps
(`-PGID`). When the pipe ends - the pilot exited or died, since the kernel
closes its end - it SIGKILLs the groups still listed. (A payload forked in the
instant before its pilot's death, not yet listed, escapes it.)

Started as a script (standard library only), so it needs no import path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import IO

log = logging.getLogger(__name__)


def main(lines: IO[str]) -> None:
    groups: set[int] = set()
    for line in lines:
        sign, number = line[:1], int(line[1:])
        if sign == "+":
            groups.add(number)
        else:
            groups.discard(number)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


class Watchdog:
    """The pilot's end of the pipe; `watch` and `forget` are safe from any thread.

    Each line is one `os.write` of a few bytes, which a pipe takes whole (below PIPE_BUF
    bytes, writes are atomic): no lock and no buffered stream, so the pilot's slot
    threads never queue behind one another (a lock held across a write, a call that
    lets go of the GIL, made them wait for the interpreter's thread switch)."""

    def __init__(self) -> None:
        # its own session: a signal to the pilot's process group does not end it first
        self._process = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True)
        assert self._process.stdin is not None
        self._pipe = self._process.stdin.fileno()
        self._closed = False

    def watch(self, group: int) -> None:
        self._tell(b"+%d\n" % group)

    def forget(self, group: int) -> None:
        self._tell(b"-%d\n" % group)

    def _tell(self, line: bytes) -> None:
        if self._closed:
            return
        try:
            os.write(self._pipe, line)
        except OSError:  # killed by someone (a broken pipe): the pilot goes on
            log.warning("the payload watchdog has ended")

    def close(self) -> None:
        """End the watchdog: it kills the groups still listed (none, after a clean end)."""
        self._closed = True
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends when its pilot does
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main(sys.stdin)
