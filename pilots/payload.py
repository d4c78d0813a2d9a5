"""One payload: its work dir, rendered steering files, the process, and what it left behind."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pilots import containers
from pilots.checksums import adler32_file
from pilots.efficiency import SlotGaps
from pilots.logship import PackedLog, pack
from pilots.meter import Meter, NoMeter, Usage
from pilots.rendering import render
from pilots.watchdog import Watchdog

log = logging.getLogger(__name__)

P = TypeVar("P", bound=PurePath)

#: Lines of the payload's output sent back with the report.
TAIL_LINES = 60
#: Seconds between SIGTERM and SIGKILL when a payload must stop.
KILL_GRACE = 10.0
#: Exit statuses of a payload ended by a signal that usually comes from outside (the batch
#: system's, at the same moment as its pilot's), and how long the pilot may take to say so.
OUTSIDE_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP})
OUTSIDE_GRACE = 2.0
#: Characters of a reason the tower keeps.
REASON_LIMIT = 500
#: Errors that mean the site's disk cannot take the outputs: the site's fault, said so.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Errors of the site's file systems (full, read-only, failing): reported, not a pilot's bug.
SITE_ERRORS = DISK_FULL | {errno.EROFS, errno.EIO}
#: The suffix of an output being copied into the site's storage (removed on any error).
PARTIAL = ".part"
#: What the pilot's account of how a payload ran holds at most (the tower refuses more):
#: characters of a steering file, of an argument or environment value, and how many of each.
STEERING_LIMIT = 262144
VALUE_LIMIT = 65536
STEERING_FILES, ARGUMENTS, VARIABLES = 100, 1000, 1000


class Payload:
    """Runs one claimed job in its own process group; `kill` may come from another thread.

    It runs in `work_dir`, its slot's directory: a success leaves it empty for the
    slot's next payload (making and removing directories per job costs more than a
    short job), anything else is moved aside to `JOB.ATTEMPT` beside it for a look."""

    def __init__(self, claim: dict[str, Any], pilot: dict[str, Any], work_dir: Path,
                 storage: Path, gaps: SlotGaps | None = None,
                 watchdog: Watchdog | None = None, meter: Meter | None = None,
                 limit_mb: float | None = None) -> None:
        self.job: int = claim["job"]
        self.attempt: int = claim["attempt"]
        self.claim = claim
        #: What the job needs of its pilot: cores, and memory in MB (None: not said).
        self.cores: int = int(claim.get("cores") or 1)
        self.memory: int | None = claim.get("memory")
        #: The memory its tree may use before it is killed as out_of_memory (None: no limit).
        self.limit_mb = limit_mb
        self.work_dir = work_dir
        self.output_dir = self.work_dir / "output"
        self.input_dir = self.work_dir / "inputs"
        self.stage_dir = stage_dir(storage, claim["production"], self.job, self.attempt)
        #: The container it runs in (None: bare); it sees its dirs at INSIDE there.
        self.container: dict[str, Any] | None = claim.get("container")
        seen = containers.INSIDE if self.container else self.work_dir
        self.variables = {**claim["variables"], **pilot, "cores": self.cores,
                          "work_dir": seen, "output_dir": seen / "output",
                          "input_dir": seen / "inputs",
                          "python": containers.INSIDE_PYTHON if self.container
                          else sys.executable,
                          # the job's input files, as a JSON list of their paths
                          "inputs": json.dumps([str(seen / "inputs" / Path(item["name"]).name)
                                                for item in claim.get("inputs", [])])}
        #: How it was run, for the tower's provenance record: filled in as it is prepared.
        self.provenance: dict[str, Any] = {"host": socket.gethostname()}
        self.ending = "finished"
        self.reason: str | None = None
        #: The payload's peak resident memory (its tree's), its CPU seconds (user + system,
        #: of its tree) and how long its process ran, once it ended.
        self.max_rss_mb: int | None = None
        self.cpu_seconds: float | None = None
        self.seconds: float | None = None
        #: Its full stdout and stderr, packed for the tower once it ended (None: none).
        self.full_log: PackedLog | None = None
        self._meter: Meter = meter or NoMeter()
        self._process: subprocess.Popen[bytes] | None = None
        self._gaps = gaps or SlotGaps()
        self._watchdog = watchdog
        self._lock = threading.Lock()
        #: Set once the pilot says why the payload must end.
        self._told = threading.Event()

    @property
    def key(self) -> tuple[int, int]:
        return (self.job, self.attempt)

    def run(self) -> dict[str, Any]:
        """Run to the end; return the report for the tower. The work dir is empty again
        after a success; after anything else it is moved aside.

        This is the slot's exception boundary: whatever goes wrong while the job is
        prepared, run or collected (a bad steering name, an environment the system
        refuses, a full disk) ends this attempt as `setup` with the reason, its process
        is stopped and its partial outputs removed, and the slot takes the next job."""
        try:
            report = self._run()
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in SITE_ERRORS:
                # the site's disks, not a fault of the pilot: no traceback to read
                log.warning("job=%s attempt=%s: %s", self.job, self.attempt, _failure(exc))
            else:
                log.exception("job=%s attempt=%s: the pilot could not run it", self.job,
                              self.attempt)
            self._abandon()
            report = self._report("setup", reason=_failure(exc))
        if report["ending"] == "finished" and report["exit_code"] == 0:
            self._tidy()
            return report
        try:
            self.work_dir.rename(self.work_dir.with_name(f"{self.job}.{self.attempt}"))
        except FileNotFoundError:
            pass
        except OSError:  # cannot be kept: the slot's next payload needs it empty
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return report

    def _abandon(self) -> None:
        """After an error: no process of this attempt runs on, and no file of it stays in
        the site's storage (its stage dir is its own, and no report names its files)."""
        process = self._process
        if process is not None and process.returncode is None:
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(OSError):
                process.wait()
        shutil.rmtree(self.stage_dir, ignore_errors=True)

    def _run(self) -> dict[str, Any]:
        try:
            argv, environment = self._prepare()
        except (OSError, ValueError) as exc:  # a template's problem is a ValueError
            return self._report("setup", reason=_failure(exc, "preparing the job failed"))
        log_path = self.work_dir / "payload.log"
        with open(log_path, "wb") as output, self._lock:
            if self.ending != "finished":  # killed before it started
                return self._report(self.ending, reason=self.reason)
            try:
                self._process = subprocess.Popen(
                    argv, cwd=self.work_dir, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, env=environment, start_new_session=True)
            except (OSError, ValueError) as exc:  # ValueError: an environment name with '='
                return self._report("setup", reason=_failure(exc, f"cannot start {argv[0]!r}"))
            self._gaps.started()
            self._meter.start(self.key, self._process.pid, self.limit_mb)
            if self._watchdog is not None:
                # its process group dies with the pilot (not PR_SET_PDEATHSIG: that needs a
                # preexec_fn, which turns subprocess's vfork into a fork, and payloads
                # then start 4x slower)
                self._watchdog.watch(self._process.pid)
        began = time.monotonic()
        try:
            code = self._wait(float(self.claim["walltime"]))
        finally:
            usage = self._meter.stop(self.key)
        if self._watchdog is not None:
            self._watchdog.forget(self._process.pid)
        self._gaps.ended()
        self.seconds = time.monotonic() - began
        self._measured(usage)
        if code in OUTSIDE_SIGNALS and self.ending == "finished":
            # the batch system signals the pilot and its payloads at once (scancel,
            # preemption): give the pilot a moment to say so before calling it the payload's
            self._told.wait(OUTSIDE_GRACE)
        tail = ""
        if _said_something(log_path):  # a silent payload's log is not read twice for nothing
            tail = _tail(log_path)
            self.full_log = pack(log_path, int(self.claim.get("log_bytes") or 0))
        if self.ending != "finished" or code != 0:
            return self._report(self.ending, code, tail, self.reason)
        return self._report("finished", code, tail, outputs=self._collect())

    def _prepare(self) -> tuple[list[str], dict[bytes, bytes]]:
        try:  # one call where the slot's last payload left its dir ready
            os.mkdir(self.output_dir)
        except FileExistsError:
            pass
        except FileNotFoundError:
            self.output_dir.mkdir(parents=True)
        binds = [(str(self.work_dir), str(self.variables["work_dir"]), True)]
        # the job reads its inputs where the site's storage element holds them; in a
        # container, through a read-only bind on an empty file of the same name
        for item in self.claim.get("inputs", []):
            self.input_dir.mkdir(exist_ok=True)
            name = Path(item["name"]).name
            if self.container:
                (self.input_dir / name).touch()
                binds.append((item["path"], f"{self.variables['input_dir']}/{name}", False))
            else:
                (self.input_dir / name).symlink_to(item["path"])
        steering = {name: render(text, self.variables)
                    for name, text in self.claim["steering"].items()}
        for name, text in steering.items():
            (self.work_dir / name).write_text(text)
        argv = [render(argument, self.variables) for argument in self.claim["command"]]
        given = {name: render(text, self.variables)
                 for name, text in self.claim["environment"].items()}
        given.update({"GRIDTOWER_JOB": str(self.job), "GRIDTOWER_ATTEMPT": str(self.attempt),
                      "GRIDTOWER_OUTPUT_DIR": str(self.variables["output_dir"]),
                      # threaded libraries (OpenMP, MKL's) take this many threads
                      "GRIDTOWER_CORES": str(self.cores), "OMP_NUM_THREADS": str(self.cores)})
        self.provenance.update(_account(argv, steering, given))
        if self.container:
            argv = self._contained(argv, binds, given)
        self.provenance["argv"] = [_cut(part, VALUE_LIMIT) for part in argv[:2 * ARGUMENTS]]
        # in bytes, as exec takes them: the pilot's own environment is not decoded and
        # encoded again for every payload
        return argv, {**os.environb, **{os.fsencode(name): os.fsencode(value)
                                        for name, value in given.items()}}

    def _contained(self, command: list[str], binds: list[tuple[str, str, bool]],
                   given: dict[str, str]) -> list[str]:
        """`command` wrapped in its container's runtime; raises ContainerProblem (a `setup`
        ending) for a runtime the site does not offer, or an image it does not hold."""
        assert self.container is not None
        runtime, template = self.container["runtime"], self.container.get("template")
        named = {"runtime": runtime, "image": self.container["image"]}
        self.provenance["container"] = named
        if not template:
            raise containers.ContainerProblem(f"this site offers no {runtime} runtime")
        problem = containers.environment_problem(list(self.claim["environment"]))
        if problem:
            raise containers.ContainerProblem(f"environment: {problem}")
        image = containers.resolve_image(self.container["image"], template["kind"],
                                         self.container.get("images"))
        named.update({"path": image,
                      "digest": containers.image_digest(image, template["kind"])})
        return containers.wrap(template, image, command, self.variables, binds, given)

    def _wait(self, walltime: float) -> int:
        """Reap the payload with wait4, which also gives its peak memory (that of its
        largest process, children it waited for included) and CPU time (its own and that
        of the children it waited for); it is killed at its walltime (found by polling its
        pidfd). Popen is told the exit status, so nothing else reaps it."""
        process = self._process
        assert process is not None
        why = ("walltime", f"ran past its walltime of {walltime:.0f}s")
        timer = None
        try:
            in_time = _ends_within(process.pid, walltime)
        except OSError:  # no pidfd (Linux before 5.3): a timer thread ends it instead
            in_time, timer = True, threading.Timer(walltime, self.kill, why)
            timer.daemon = True
            timer.start()
        if not in_time:
            self.kill(*why)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        # ru_maxrss is in kilobytes on Linux
        self.max_rss_mb = max(1, round(usage.ru_maxrss / 1024))
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode

    def _measured(self, usage: Usage) -> None:
        """Take the meter's figures of the tree over the rusage of the payload; a tree
        killed over its memory limit ends as out_of_memory."""
        if usage.peak_mb is not None:
            self.max_rss_mb = max(self.max_rss_mb or 0, round(usage.peak_mb))
        if usage.cpu_seconds is not None:
            self.cpu_seconds = usage.cpu_seconds
        if usage.over_limit:
            asked = f"{self.memory} MB requested" if self.memory else \
                "no request: the pilot's memory"
            # a cgroup's count of OOM kills includes the system's own, with no limit set
            why = (f"over its limit of {self.limit_mb:.0f} MB ({asked}, plus the site's "
                   "tolerance)") if self.limit_mb else "by the system's OOM killer"
            with self._lock:
                if self.ending == "finished":
                    self.ending, self.reason = "out_of_memory", (
                        f"killed using {self.max_rss_mb} MB, {why}")

    def refuse(self, reason: str) -> dict[str, Any]:
        """The report of a job the pilot will not start (it can never fit the pilot)."""
        return self._report("setup", reason=reason)

    def kill(self, ending: str, reason: str) -> None:
        """Stop the payload (SIGTERM, then SIGKILL after a grace); it ends as `ending`."""
        with self._lock:
            if self.ending == "finished":
                self.ending, self.reason = ending, reason
            process = self._process
        self._told.set()
        # the returncode, not poll(): only _wait reaps the payload
        if process is None or process.returncode is not None:
            return
        _signal_group(process, signal.SIGTERM)
        threading.Thread(target=self._kill_later, args=(process,), daemon=True).start()

    @staticmethod
    def _kill_later(process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + KILL_GRACE
        while process.returncode is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.returncode is None:
            _signal_group(process, signal.SIGKILL)

    def _tidy(self) -> None:
        """Empty the work dir for the slot's next payload: remove what the pilot put there;
        if the payload left more, remove the whole dir (the next payload makes it anew)."""
        made = ["payload.log", *self.claim["steering"]]
        try:
            for name in made:
                (self.work_dir / name).unlink(missing_ok=True)
            if self.input_dir.exists():
                shutil.rmtree(self.input_dir)
            if any(self.output_dir.iterdir()) or \
                    {entry.name for entry in self.work_dir.iterdir()} != {"output"}:
                shutil.rmtree(self.work_dir)
        except OSError:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _collect(self) -> list[dict[str, Any]]:
        """Move declared outputs to the site's storage, under a name carrying the attempt.

        Across file systems each is copied under a partial name and renamed when whole,
        so a full disk leaves no file that looks finished; on any error the caller
        removes the attempt's stage dir, partial file included."""
        patterns = self.claim["outputs"]
        names = sorted(path.name for path in self.output_dir.iterdir() if path.is_file())
        chosen = [name for name in names if any(fnmatch.fnmatch(name, p) for p in patterns)]
        if chosen:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
        outputs = []
        for name in chosen:
            target = self.stage_dir / name
            _move(self.output_dir / name, target)
            outputs.append({"name": name, "path": str(target), "size": target.stat().st_size,
                            "adler32": adler32_file(target)})
        return outputs

    def _report(self, ending: str, code: int | None = None, tail: str = "",
                reason: str | None = None, outputs: list[dict[str, Any]] | None = None,
                ) -> dict[str, Any]:
        return {
            "job": self.job, "attempt": self.attempt, "ending": ending,
            "exit_code": code if code is not None and code >= 0 else None,
            "signal": -code if code is not None and code < 0 else None,
            "reason": reason, "log_tail": tail, "outputs": outputs or [],
            "max_rss_mb": self.max_rss_mb,
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 3),
            "wall_seconds": None if self.seconds is None else round(self.seconds, 3),
            "provenance": self.provenance,
        }


def _account(command: list[str], steering: dict[str, str], environment: dict[str, str]
             ) -> dict[str, Any]:
    """The rendered command, steering files and environment as the tower keeps them in a
    provenance record: within its bounds, what is longer cut (and said so), never refused
    (a payload may be given an environment value longer than the record keeps)."""
    return {"command": [_cut(part, VALUE_LIMIT) for part in command[:ARGUMENTS]],
            "steering": {name: _cut(text, STEERING_LIMIT)
                         for name, text in list(steering.items())[:STEERING_FILES]},
            "environment": {_cut(name, VALUE_LIMIT): _cut(value, VALUE_LIMIT)
                            for name, value in list(environment.items())[:VARIABLES]}}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    note = f"... [{len(text)} characters, cut]"
    return text[:limit - len(note)] + note


def stage_dir(storage: P, production: str, job: int, attempt: int) -> P:
    """Where an attempt's outputs wait in the site's storage for the stager: the tower
    accepts a reported output only as a file of this directory."""
    return storage / production / f"{job}.{attempt}"


def _move(source: Path, target: Path) -> None:
    """Move `source` to `target`: a rename on one file system, else a copy to a partial
    name beside `target` renamed when whole (the partial copy is removed on any error)."""
    try:
        source.rename(target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = target.with_name(f".{target.name}{PARTIAL}")
    try:
        shutil.copyfile(source, partial)
        partial.rename(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    source.unlink()


def _failure(exc: BaseException, what: str = "the pilot could not run the job") -> str:
    """A short reason for a `setup` report; a full disk is named as the site's."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        what = f"the site's disk is full ({what})"
    elif isinstance(exc, OSError) and exc.errno == errno.EROFS:
        what = f"the site's disk is read-only ({what})"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{what}: {detail}"[:REASON_LIMIT]


def _signal_group(process: subprocess.Popen[bytes], number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, number)


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether process `pid` ends within `seconds`, without reaping it: its pidfd is
    polled, so no timer thread is made per payload. Raises OSError without pidfds."""
    descriptor = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        return bool(poller.poll(max(0, int(seconds * 1000))))
    finally:
        os.close(descriptor)




def _said_something(path: Path) -> bool:
    """Whether the payload's log at `path` holds anything (or cannot be told)."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return True  # reading it says why


def _tail(path: Path) -> str:
    try:
        with open(path, errors="replace") as stream:
            return "".join(deque(stream, maxlen=TAIL_LINES))[-8000:]
    except OSError:
        return ""
