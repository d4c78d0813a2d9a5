"""The pilot's loop: take messages, claim jobs, run payloads in slots, heartbeat, report, drain.

It stops taking work when its remaining walltime is too short for the next
job, after an idle timeout, or on SIGTERM — which kills running payloads and
reports them as killed before the pilot exits.

While its payloads are short (a median under SHORT seconds over the last ones), a
pilot claims a few jobs beyond its slots, as high-throughput executors prefetch
tasks: a slot that frees takes the next claimed job at once instead of waiting for
a round trip to the tower, and such a job waits at most about one short payload.
With long payloads it claims only what it can start, so late binding holds.
"""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilots.batchenv import time_left
from pilots.client import TowerClient, TowerRefused, TowerUnreachable
from pilots.efficiency import SlotGaps
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
        self.scratch = settings.scratch / settings.pilot_id
        #: The work dirs not in use; a payload takes one, its report gives it back.
        self.free_dirs = [self.scratch / f"slot-{number}"
                          for number in range(settings.slots + self.ahead)]
        self.gaps = SlotGaps()
        #: Stage dirs of failed attempts that could not be removed yet (no report names
        #: their files); tried again after each job.
        self.litter: set[Path] = set()
        #: Kills the payloads' process groups if the pilot dies; started by `run`.
        self.watchdog: Watchdog | None = None

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
        try:
            why = self._work()
            for payload in list(self.running.values()):
                payload.kill("killed", why)
            while self.running:
                self._send_reports(self._finished(block=True))
        except (TowerRefused, TowerUnreachable):
            self._forsake()
            raise
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

    def _capacity(self) -> int:
        """Jobs the pilot holds claimed at most: its slots, and a few ahead while its
        payloads are short."""
        short = len(self.recent) >= 4 and statistics.median(self.recent) < SHORT
        return self.settings.slots + (self.ahead if short else 0)

    def _free(self, ended: int) -> int:
        """Jobs to ask for now: room below the capacity, never below 0 (when payloads
        grow past SHORT, the capacity shrinks below what the pilot holds: those wait for
        a slot) and never more than free work dirs. `ended`: payloads that ended and
        are not yet reported (they still count in `running`)."""
        held = len(self.running) - ended
        return max(0, min(self._capacity() - held, len(self.free_dirs)))

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
        answer = self.client.call("claim", {"jobs": [[m["job"], m["attempt"]] for m in messages],
                                            "reports": reports})
        self.source.ack(messages)  # right after the claim: never held for a payload's length
        self._reported(reports, answer["verdicts"])
        started = 0
        for claim in answer["jobs"]:
            key = (claim["job"], claim["attempt"])
            if claim["granted"] and key not in self.running:
                self._start(claim)
                started += 1
            elif not claim["granted"]:
                log.info("job=%s attempt=%s refused: %s", claim["job"], claim["attempt"],
                         claim["reason"])
        return started

    def _start(self, claim: dict[str, Any]) -> None:
        pilot_values = {"cores": self.settings.cores, "site": self.settings.site,
                        "pilot_id": self.settings.pilot_id}
        payload = Payload(claim, pilot_values, self.free_dirs.pop(), self.settings.storage,
                          self.gaps, self.watchdog)
        self.running[payload.key] = payload
        log.info("job=%s attempt=%s started", payload.job, payload.attempt)
        self.todo.put(payload)

    def _slot(self) -> None:
        while True:
            self.finished.put(self.todo.get().run())
            self.source.interrupt()

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
        return reports

    def _forsake(self) -> None:
        """The tower refused this pilot (it wrote the pilot off while it was frozen, say) or
        is gone: no report of it will be accepted, so nothing it ran will be staged. Its
        payloads are stopped and their stage dirs removed, or they stay at the site for good."""
        forsaken = list(self.running.values())
        for payload in forsaken:
            payload.kill("killed", "the tower refused this pilot")
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
            except Exception:  # the loop boundary of this thread: the next beat tries again
                log.exception("heartbeat failed")
                continue
            for job, attempt in answer["stop"]:
                payload = self.running.get((job, attempt))
                if payload is not None:
                    log.warning("job=%s attempt=%s: the tower asks to stop it", job, attempt)
                    payload.kill("cancelled", "the tower no longer counts this attempt")
