"""`tower run`: the loops of the tower, each a `run_once` in a thin thread with a stop event."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from tower.loops import factory, matchmaker, monitor, stager, trial, tune, wakeups
from tower.management import chains, notify
from tower.model import fleet, tally
from tower.model.states import JOB_TERMINAL
from tower.runtime import Pulse, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loop:
    name: str
    run_once: Callable[[Runtime], Any]


LOOPS = (
    Loop("matchmaker", matchmaker.run_once),
    Loop("factory", factory.run_once),
    Loop("monitor", monitor.run_once),
    Loop("stager", stager.run_once),
    Loop("trials", trial.run_once),
    Loop("tune", tune.run_once),
    Loop("notifier", notify.run_once),
)


def run_cycle(runtime: Runtime) -> None:
    """Every loop once, in order; an error in one is logged and the others still run."""
    for loop in LOOPS:
        run_guarded(loop, runtime)


@dataclass
class CycleStats:
    """One loop's cycles in this process, for /metrics: how many, how many failed, and
    their seconds (summed, and the last)."""

    cycles: int = 0
    errors: int = 0
    seconds: float = 0.0
    last_seconds: float = 0.0


#: The loops' cycles in this process, by loop name (a process that runs no loop has none).
STATS: dict[str, CycleStats] = {}
_STATS_LOCK = threading.Lock()


def run_guarded(loop: Loop, runtime: Runtime) -> bool:
    """Run one cycle of `loop`; returns whether it did any work."""
    began = time.monotonic()
    failed = False
    try:
        return busy(loop.run_once(runtime.snapshot()))
    except Exception:  # the loop boundary: log with traceback, try again next cycle
        log.exception("loop=%s cycle failed", loop.name)
        failed = True
        return False
    finally:
        took = time.monotonic() - began
        with _STATS_LOCK:
            stats = STATS.setdefault(loop.name, CycleStats())
            stats.cycles += 1
            stats.errors += failed
            stats.seconds += took
            stats.last_seconds = took


def busy(result: Any) -> bool:
    """Whether a cycle's result (a count, or counts by kind) says it did work."""
    if isinstance(result, dict):
        return any(busy(value) for value in result.values())
    return bool(result)


def run_forever(runtime: Runtime, stop: threading.Event) -> list[threading.Thread]:
    """Start one thread per loop, and one listening for wake-ups from other processes;
    they run until `stop` is set."""
    threads = [threading.Thread(target=_spin, args=(loop, runtime, stop), name=loop.name,
                                daemon=True) for loop in LOOPS]
    for loop, thread in zip(LOOPS, threads, strict=True):
        runtime.pulses[loop.name] = Pulse(thread)
        thread.start()
    listener = wakeups.listen(runtime, stop)
    return threads + ([listener] if listener else [])


def halt(runtime: Runtime, stop: threading.Event) -> None:
    """Set `stop` and wake every loop, so none sleeps out its pause."""
    stop.set()
    runtime.wake(*(loop.name for loop in LOOPS))


def _spin(loop: Loop, runtime: Runtime, stop: threading.Event) -> None:
    """Cycle until `stop`: again at once after a cycle that did work (a backlog of many
    batches drains at the database's pace, not one batch per interval), else after the
    interval or when woken."""
    alarm = runtime.alarm(loop.name)
    pulse = runtime.pulses.setdefault(loop.name, Pulse())
    while not stop.is_set():
        started = time.monotonic()
        pulse.started = time.time()
        worked = run_guarded(loop, runtime)
        pulse.ended = time.time()
        if not worked:
            alarm.wait(runtime.config.loops.interval)
        alarm.clear()
        stop.wait(started + runtime.config.loops.busy_pause - time.monotonic())


def stop_pilots(runtime: Runtime) -> int:
    """Ask every batch system to end the tower's active pilots; returns how many."""
    with Session(runtime.engine) as session:
        pilots = [(pilot.site, pilot.batch_id) for pilot in fleet.active(session)
                  if pilot.batch_id and pilot.site in runtime.config.sites]
    by_site: dict[str, list[str]] = {}
    for site, batch_id in pilots:
        by_site.setdefault(site, []).append(batch_id)  # type: ignore[arg-type]
    for site, batch_ids in by_site.items():
        runtime.batch_system(site).cancel(batch_ids)
    return len(pilots)


def unfinished(runtime: Runtime) -> int:
    """Jobs not yet in a terminal state, from the tally (no scan of the jobs table), and
    the steps of chains that may still make jobs."""
    with Session(runtime.engine) as session:
        return sum(count.jobs for states in tally.counts(session).values()
                   for state, count in states.items() if state not in JOB_TERMINAL
                   ) + chains.waiting(session)
