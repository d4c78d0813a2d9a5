"""The `local` batch system: pilots as detached processes on the tower's machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from sites.batch import BatchState, BatchStatus, PilotRequest, Probe
from sites.config import SiteConfig
from sites.errors import BackendError
from sites.runner import Runner


class LocalBatch:
    """Implements `BatchSystem` with subprocesses; the batch id is the process id."""

    carries_inputs = False

    def __init__(self, site: SiteConfig, runner: Runner) -> None:
        # pilots are the tower's own child processes here: no commands to run
        self.site = site
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, pilot_id: str) -> str:
        return f"{self.site.scratch}/pilot-logs/{pilot_id}.log"

    def credential(self) -> None:
        return None  # the tower's own processes

    def probes(self) -> list[Probe]:
        return []  # pilots are the tower's own processes

    def submit(self, request: PilotRequest) -> str:
        log_path = Path(self.log_path(request.pilot_id))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = request.argv
        if self.site.setup:
            # the admin's setup lines are shell by intent; the pilot's argv stays
            # out of the shell text, passed as positional arguments
            argv = ["/bin/sh", "-c", "\n".join([*self.site.setup, 'exec "$@"']), "pilot", *argv]
        try:
            with open(log_path, "ab") as log:
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **request.environment}, start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise BackendError(f"site={self.site.name}: cannot start pilot {argv[0]!r}: "
                               f"{exc.strerror}") from exc
        self._children[str(child.pid)] = child
        return str(child.pid)

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        return {batch_id: self._status(batch_id) for batch_id in batch_ids}

    def _status(self, batch_id: str) -> BatchStatus:
        child = self._children.get(batch_id)
        if child is not None:
            code = child.poll()
            if code is None:
                return BatchStatus(BatchState.RUNNING)
            del self._children[batch_id]
            return BatchStatus(BatchState.ENDED, exit_code=code,
                               reason=f"signal {-code}" if code < 0 else None)
        # started by an earlier tower process: alive if the pid still runs a pilot
        alive = _is_pilot(batch_id)
        return BatchStatus(BatchState.RUNNING if alive else BatchState.ENDED)

    def cancel(self, batch_ids: list[str]) -> None:
        """SIGTERM each pilot's whole tree: its process group and those of the processes
        it started (payloads run in sessions of their own), as a batch system's cgroup
        would; a pilot too frozen to stop its payloads then loses them anyway."""
        for batch_id in batch_ids:
            if batch_id in self._children or _is_pilot(batch_id):
                for group in _groups_of_tree(int(batch_id)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(group, signal.SIGTERM)


def _is_pilot(batch_id: str) -> bool:
    # a recycled pid would belong to some other program: check its command line
    try:
        cmdline = Path(f"/proc/{int(batch_id)}/cmdline").read_bytes()
        stat = Path(f"/proc/{int(batch_id)}/stat").read_text()
    except (OSError, ValueError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"pilot" in cmdline


def _groups_of_tree(pid: int) -> list[int]:
    """The process groups of `pid` and of all its descendants (from /proc), its own first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    groups, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(child)
                if group not in groups:
                    groups.append(group)
    return groups
