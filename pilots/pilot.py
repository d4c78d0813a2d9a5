"""The pilot's loop: take messages, claim jobs, run payloads in slots, heartbeat, report, drain.

It stops taking work when its remaining walltime is too short for the next
job, after an idle timeout, or on SIGTERM — which kills running payloads and
reports them as killed before the pilot exits.

While its payloads are short (a median under SHORT seconds over the last ones), a
pilot claims a few jobs beyond its slots, as high-throughput executors prefetch
tasks: a slot that frees takes the next claimed job at once instead of waiting for
a round trip to the tower. It claims enough ahead to keep its slots busy through one
claim's round trip at the payloads' recent pace (AHEAD at least, AHEAD_MAX at most), so
such a job waits about one round trip. With long payloads it claims only what it can
start, so late binding holds.

A pilot has cores and (when its site says) memory; a job needs cores and memory
(the claim says). Payloads run together while the sums of their cores and memory
fit the pilot's, and never more at once than its slots: one 8-core job or eight
1-core jobs in an 8-core pilot. Claimed jobs start in the order they were claimed:
a job that does not fit what is free now waits for room, and nothing claimed after
it starts before it (a stream of small jobs would otherwise keep a big one waiting
for ever); meanwhile the pilot claims no more than the cores left over. A job that
could never fit the pilot is not run: it is reported as a `setup` failure (the
tower refuses to grant such a claim; this guards the pilot against a tower that
did not).
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import socket
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pilots.batchenv import time_left
from pilots.client import TowerClient, TowerRefused, TowerUnreachable
from pilots.efficiency import SlotGaps
from pilots.meter import Meter, NoMeter, open_meter
from pilots.payload import Payload
from pilots.sources import Source, SourceLost
from pilots.watchdog import Watchdog

log = logging.getLogger(__name__)

#: Payloads shorter than this (median seconds of the last RECENT) let a pilot claim ahead.
SHORT = 1.0
RECENT = 32
#: Jobs claimed ahead at least (a quarter of the slots, if more): enough that a slot runs
#: short payloads back to back between two of the pilot's calls to the tower.
AHEAD = 4
#: Jobs claimed ahead at most, however slow the tower answers.
AHEAD_MAX = 64
#: Seconds a refused pilot waits for its payloads to stop before it removes their stage dirs.
FORSAKE_SECONDS = 15.0


@dataclass(frozen=True)
class PilotSettings:
    tower: str
    site: str
    queue: str
    pilot_id: str
    source: str
    broker_queue: str
    source_options: dict[str, str]
    slots: int
    cores: int
    walltime: float
    drain_margin: float
    idle_timeout: float
    heartbeat: float
    scratch: Path
    storage: Path
    #: Seconds between polls of an empty queue.
    poll: float = 1.0
    #: Seconds the pilot waits for an unreachable tower before it gives up.
    patience: float = 300.0
    #: Its own certificate and key (one PEM file, 0600), when the tower asks for one.
    credential: Path | None = None
    #: The CA bundle that signed the tower's certificate.
    tower_ca: Path | None = None
    #: The pilot's memory in MB (None: not known, not shared out).
    memory: int | None = None
    #: A payload may use its memory request grown by this fraction before it is killed.
    memory_tolerance: float = 0.1
    #: How payloads' memory is measured and enforced (pilots.meter.WATCHES).
    memory_watch: str = "auto"


class Pilot:
    def __init__(self, settings: PilotSettings, client: TowerClient, source: Source) -> None:
        self.settings = settings
        self.client = client
        self.source = source
        batch_left = time_left()
        walltime = min(settings.walltime, batch_left) if batch_left else settings.walltime
        self.deadline = time.monotonic() + walltime
        self.stop = threading.Event()       # SIGTERM: end now
        self.stop_reason = ""
        self.draining = False
        self.drain_reason = ""
        self.running: dict[tuple[int, int], Payload] = {}
        self.finished: queue.Queue[dict[str, Any]] = queue.Queue()
        #: Claimed payloads for the slots' threads (one thread a slot, made once: starting a
        #: thread for each of many short payloads costs the pilot's loop more than the job).
        self.todo: queue.Queue[Payload] = queue.Queue()
        for number in range(settings.slots):
            threading.Thread(target=self._slot, daemon=True, name=f"slot-{number}").start()
        #: Jobs claimed beyond the slots while payloads are short, and their recent lengths.
        self.ahead = max(AHEAD, settings.slots // 4)
        self.recent: deque[float] = deque(maxlen=RECENT)
        #: Seconds the recent claims took, answer included.
        self.round_trips: deque[float] = deque(maxlen=RECENT)
        self.scratch = settings.scratch / settings.pilot_id
        #: The work dirs not in use; a payload takes one, its report gives it back.
        self.free_dirs = [self.scratch / f"slot-{number}"
                          for number in range(settings.slots + self.ahead)]
        self.dirs_made = len(self.free_dirs)
        self.gaps = SlotGaps()
        #: Stage dirs of failed attempts that could not be removed yet (no report names
        #: their files); tried again after each job.
        self.litter: set[Path] = set()
        #: Kills the payloads' process groups if the pilot dies; started by `run`.
        self.watchdog: Watchdog | None = None
        #: Measures and enforces payloads' memory; chosen by `run`.
        self.meter: Meter = NoMeter()
        #: Claimed payloads not started yet, in claim order, and what the started use.
        self.waiting: deque[Payload] = deque()
        self.started: set[tuple[int, int]] = set()
        self.used_cores = 0
        self.used_memory = 0
        #: Guards the four above: a slot that ends its payload frees its room and starts
        #: the next waiting payload itself, while the loop may be in a call to the tower.
        self.room = threading.Lock()

    def terminate(self, reason: str) -> None:
        """Called from the signal handler: kill payloads, report, exit."""
        self.stop_reason = reason
        self.client.hurry()  # the batch system's SIGKILL follows soon
        self.stop.set()
        self.source.interrupt()

    def run(self) -> str:
        """Run until drained; returns why the pilot ended."""
        self.client.call("register", {"host": socket.getfqdn()})
        log.info("pilot=%s site=%s registered, %d slots, walltime %.0fs left",
                 self.settings.pilot_id, self.settings.site, self.settings.slots,
                 self.deadline - time.monotonic())
        beating = threading.Thread(target=self._heartbeats, daemon=True, name="heartbeat")
        beating.start()
        self.watchdog = Watchdog()
        self.meter = open_meter(self.settings.memory_watch)
        log.info("pilot=%s: %d cores, %d slots, %s memory; payloads' memory: %s",
                 self.settings.pilot_id, self.settings.cores, self.settings.slots,
                 f"{self.settings.memory} MB" if self.settings.memory else "unknown",
                 self.meter.kind)
        try:
            why = self._work()
            self._stop_all("killed", why)
            while self.running:
                self._send_reports(self._finished(block=True))
        except (TowerRefused, TowerUnreachable):
            self._forsake()
            raise
        finally:
            self.meter.close()
        self.watchdog.close()
        self.source.close()
        self.client.call("goodbye", {"message": why})
        log.info("pilot=%s ended: %s; %s", self.settings.pilot_id, why, self.gaps.summary())
        return why

    def _work(self) -> str:
        idle_since = time.monotonic()
        while not self.stop.is_set():
            reports = self._finished(block=False)
            if self.draining:
                self._send_reports(reports)
                if not self.running:
                    return self.drain_reason
                self._pause()
                continue
            if time.monotonic() > self.deadline:
                return "walltime reached"
            # asked with 0 free slots too: the source keeps its connection alive
            started = self._take(self._free(len(reports)), reports)
            if started or self.running:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.settings.idle_timeout:
                self._drain(f"idle for {self.settings.idle_timeout:.0f}s")
            if not started:
                self._pause()
        return self.stop_reason

    def _ahead(self) -> int:
        """Jobs to claim beyond the slots: none unless payloads are short; else enough to
        run through one claim's round trip at their recent pace, within AHEAD..AHEAD_MAX."""
        if not self._short():
            return 0
        if not self.round_trips:
            return self.ahead
        pace = max(statistics.median(self.recent), 0.001)
        wanted = math.ceil(self.settings.slots * statistics.median(self.round_trips) / pace)
        return max(self.ahead, min(AHEAD_MAX, wanted))

    def _short(self) -> bool:
        return len(self.recent) >= 4 and statistics.median(self.recent) < SHORT

    def _free(self, ended: int) -> int:
        """Jobs to ask for now: room below the capacity, never below 0 (when payloads
        grow past SHORT, the capacity shrinks below what the pilot holds: those wait for
        a slot), never more than the cores no job holds or waits
        for (each job needs one at least; a few more while payloads are short). `ended`:
        payloads that ended and are not yet reported (they still count in `running`)."""
        held = len(self.running) - ended
        with self.room:
            cores = self.settings.cores - self.used_cores - sum(p.cores for p in self.waiting)
        ahead = self._ahead()
        room = max(0, cores) + ahead
        return max(0, min(self.settings.slots + ahead - held, room))

    def _pause(self) -> None:
        """Wait for the next poll, or less if a message comes or a payload ends first."""
        self.source.wait(self.settings.poll)

    def _take(self, free: int, reports: list[dict[str, Any]]) -> int:
        """Get up to `free` messages, claim their jobs (reporting `reports` in the same
        call), start the granted ones."""
        try:
            messages = self.source.get(free)
        except SourceLost as exc:
            self._send_reports(reports)
            self._drain(str(exc))
            return 0
        except TowerRefused as exc:  # a refused lease: the next turn asks again
            log.warning("pilot=%s: %s", self.settings.pilot_id, exc)
            self._send_reports(reports)
            return 0
        remaining = self.deadline - time.monotonic()
        fits = [m for m in messages if m["walltime"] + self.settings.drain_margin <= remaining]
        short = [m for m in messages if m not in fits]
        self.source.release(short)
        if not fits:
            self._send_reports(reports)
        started = self._claim(fits, reports) if fits else 0
        if short:
            self._drain(f"{remaining:.0f}s of walltime left, too short for the next job")
        return started

    def _claim(self, messages: list[dict[str, Any]], reports: list[dict[str, Any]]) -> int:
        asked = time.monotonic()
        answer = self.client.call("claim", {"jobs": [[m["job"], m["attempt"]] for m in messages],
                                            "reports": reports})
        self.round_trips.append(time.monotonic() - asked)
        self.source.ack(messages)  # right after the claim: never held for a payload's length
        self._reported(reports, answer["verdicts"])
        started = 0
        shared = answer.get("productions") or {}
        for claim in answer["jobs"]:
            key = (claim["job"], claim["attempt"])
            if claim["granted"] and key not in self.running:
                # what the production's jobs share came once in the answer, not in each
                self._start({**shared.get(claim["production"], {}), **claim})
                started += 1
            elif claim["granted"]:  # the tower grants a repeated claim: it runs once
                log.info("job=%s attempt=%s refused: a copy of a job this pilot holds",
                         claim["job"], claim["attempt"])
            else:
                log.info("job=%s attempt=%s refused: %s", claim["job"], claim["attempt"],
                         claim["reason"])
        return started

    def _start(self, claim: dict[str, Any]) -> None:
        pilot_values = {"site": self.settings.site, "pilot_id": self.settings.pilot_id}
        memory = claim.get("memory") or self.settings.memory
        limit = memory * (1 + self.settings.memory_tolerance) if memory else None
        if not self.free_dirs:  # more claimed ahead than ever before
            self.free_dirs.append(self.scratch / f"slot-{self.dirs_made}")
            self.dirs_made += 1
        payload = Payload(claim, pilot_values, self.free_dirs.pop(), self.settings.storage,
                          self.gaps, self.watchdog, self.meter, limit)
        self.running[payload.key] = payload
        too_big = self._too_big(payload)
        if too_big:
            log.warning("job=%s attempt=%s not run: %s", payload.job, payload.attempt, too_big)
            self.finished.put(payload.refuse(too_big))
            return
        with self.room:
            self.waiting.append(payload)
        self._dispatch()

    def _too_big(self, payload: Payload) -> str | None:
        """Why `payload` could never run in this pilot, or None."""
        if payload.cores > self.settings.cores:
            return f"it needs {payload.cores} cores, the pilot has {self.settings.cores}"
        memory = self.settings.memory
        if memory and payload.memory and payload.memory > memory:
            return f"it needs {payload.memory} MB of memory, the pilot has {memory} MB"
        return None

    def _fits_now(self, payload: Payload) -> bool:
        if len(self.started) >= self.settings.slots:
            return False
        if self.used_cores + payload.cores > self.settings.cores:
            return False
        memory = self.settings.memory
        return not (memory and self.used_memory + (payload.memory or 0) > memory)

    def _dispatch(self, ended: Payload | None = None) -> None:
        """Start waiting payloads in claim order while the first one fits what is free
        (after giving back the room of the `ended` payload, if one)."""
        chosen = []
        with self.room:
            if ended is not None and ended.key in self.started:
                self.started.discard(ended.key)
                self.used_cores -= ended.cores
                self.used_memory -= ended.memory or 0
            while self.waiting and (self.stop.is_set() or self.waiting[0].ending != "finished"
                                    or self._fits_now(self.waiting[0])):
                payload = self.waiting.popleft()
                self.started.add(payload.key)
                self.used_cores += payload.cores
                self.used_memory += payload.memory or 0
                chosen.append(payload)
        for payload in chosen:
            log.info("job=%s attempt=%s started (%d cores, %s)", payload.job,
                     payload.attempt, payload.cores,
                     f"{payload.memory} MB" if payload.memory else "no memory request")
            self.todo.put(payload)

    def _stop_all(self, ending: str, reason: str) -> None:
        """Kill every payload; those still waiting end at once, unstarted."""
        for payload in list(self.running.values()):
            payload.kill(ending, reason)
        self._dispatch()

    def _slot(self) -> None:
        while True:
            payload = self.todo.get()
            report = payload.run()
            # the next claimed payload starts now, not when the loop is back from the tower
            self._dispatch(ended=payload)
            self._ship_log(payload)
            self.finished.put(report)
            self.source.interrupt()

    def _ship_log(self, payload: Payload) -> None:
        """Send the attempt's full log before its report: the tower takes one log per
        attempt, from the pilot that ran it. A log the tower refuses or cannot take now
        is lost (the report's tail remains), never worth holding the job's report."""
        packed = payload.full_log
        if packed is None:
            return
        try:
            self.client.send(f"logs/{payload.job}/{payload.attempt}", packed.data,
                             {"cut": packed.cut})
        except (TowerRefused, TowerUnreachable) as exc:
            log.warning("job=%s attempt=%s: full log not shipped: %s", payload.job,
                        payload.attempt, exc)

    def _finished(self, block: bool) -> list[dict[str, Any]]:
        """The reports of payloads that ended (waiting up to a poll for one, if `block`)."""
        reports = []
        try:
            reports.append(self.finished.get(timeout=self.settings.poll) if block
                           else self.finished.get_nowait())
            while True:
                reports.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        for report in reports:  # their payloads have left their work dirs
            payload = self.running[(report["job"], report["attempt"])]
            self.free_dirs.append(payload.work_dir)
            if payload.seconds is not None:
                self.recent.append(payload.seconds)
            if not report["outputs"] and payload.stage_dir.exists():
                self.litter.add(payload.stage_dir)
        if reports and self.litter:
            self._sweep()
        self._dispatch()  # any waiting job told to stop
        return reports

    def _forsake(self) -> None:
        """The tower refused this pilot (it wrote the pilot off while it was frozen, say) or
        is gone: no report of it will be accepted, so nothing it ran will be staged. Its
        payloads are stopped and their stage dirs removed, or they stay at the site for good."""
        forsaken = list(self.running.values())
        self._stop_all("killed", "the tower refused this pilot")
        deadline = time.monotonic() + FORSAKE_SECONDS
        while self.running and time.monotonic() < deadline:
            for report in self._finished(block=True):
                self.running.pop((report["job"], report["attempt"]), None)
        self.litter.update(payload.stage_dir for payload in forsaken)
        self._sweep()

    def _sweep(self) -> None:
        """Remove the stage dirs of this pilot's failed attempts that are still there."""
        for stage_dir in list(self.litter):
            shutil.rmtree(stage_dir, ignore_errors=True)
            if not stage_dir.exists():
                self.litter.discard(stage_dir)

    def _send_reports(self, reports: list[dict[str, Any]]) -> None:
        """Report ended payloads in one call, when there is nothing to claim with them."""
        if reports:
            self._reported(reports, self.client.call("report", {"reports": reports})["verdicts"])

    def _reported(self, reports: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> None:
        for report, verdict in zip(reports, verdicts, strict=True):
            payload = self.running.pop((report["job"], report["attempt"]), None)
            log.info("job=%s attempt=%s ended %s: %s", report["job"], report["attempt"],
                     report["ending"], verdict["reason"] if verdict["accepted"]
                     else f"refused ({verdict['reason']})")
            if not verdict["accepted"] and payload is not None:
                # the tower will never stage what a refused report names (an attempt it
                # wrote off while this pilot was frozen, say): nothing else removes it
                self.litter.add(payload.stage_dir)
        if self.litter:
            self._sweep()

    def _drain(self, reason: str) -> None:
        if not self.draining:
            self.draining, self.drain_reason = True, reason
            log.info("pilot=%s draining: %s", self.settings.pilot_id, reason)
            self.source.close()
            self.client.call("drain", {})

    def _heartbeats(self) -> None:
        while not self.stop.wait(self.settings.heartbeat):
            keys = list(self.running)
            try:
                answer = self.client.call("heartbeat", {"jobs": [list(k) for k in keys]})
            except TowerRefused as exc:
                if exc.status != HTTPStatus.CONFLICT:
                    log.warning("heartbeat refused: %s", exc)
                    continue
                # the tower wrote this pilot off (lost, or its batch job ended: ARC's fork
                # back end kills a cancelled job's wrapper, not the pilot): nothing it runs
                # counts any more, so it stops its payloads and leaves now
                log.warning("pilot=%s: the tower refused it: %s", self.settings.pilot_id, exc)
                self.terminate(f"the tower refused it: {exc}")
                return
            except Exception:  # the loop boundary of this thread: the next beat tries again
                log.exception("heartbeat failed")
                continue
            for job, attempt in answer["stop"]:
                payload = self.running.get((job, attempt))
                if payload is not None:
                    log.warning("job=%s attempt=%s: the tower asks to stop it", job, attempt)
                    payload.kill("cancelled", "the tower no longer counts this attempt")
