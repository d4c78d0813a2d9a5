"""The loops' rhythm: a cycle that did work, or a loop woken by the API, runs again at once;
an idle loop waits out its interval."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from pathlib import Path

from tower.config import load_config
from tower.loops import daemon
from tower.runtime import Runtime


def test_busy_reads_counts_and_counts_by_kind() -> None:
    assert daemon.busy(3) and daemon.busy({"lost": 0, "staged": 2})
    assert not daemon.busy(0) and not daemon.busy({"lost": 0}) and not daemon.busy(None)


def opened(tower_yaml: Path, busy_pause: float) -> Runtime:
    """A runtime whose idle loops pause a minute, and busy ones `busy_pause`."""
    config = load_config(tower_yaml)
    return Runtime.open(config.model_copy(update={"loops": config.loops.model_copy(
        update={"interval": 60, "busy_pause": busy_pause})}))


def spin(runtime: Runtime, results: list[int], cycles: list[float]
         ) -> tuple[threading.Event, threading.Thread]:
    """Cycle a loop whose cycles return the next of `results` (then 0), noting when each
    cycle starts in `cycles`."""
    stop = threading.Event()

    def run_once(_: Runtime) -> int:
        cycles.append(time.monotonic())
        return results.pop(0) if results else 0

    thread = threading.Thread(target=daemon._spin,
                              args=(daemon.Loop("probe", run_once), runtime, stop))
    thread.start()
    return stop, thread


def end(runtime: Runtime, stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    runtime.wake("probe")
    thread.join(timeout=5)
    runtime.close()
    assert not thread.is_alive()


def test_a_woken_loop_does_not_wait_out_its_interval(tower_yaml: Path) -> None:
    runtime = opened(tower_yaml, busy_pause=0)
    cycles: list[float] = []
    stop, thread = spin(runtime, [], cycles)
    try:
        time.sleep(0.2)
        assert len(cycles) == 1  # idle: it would wait 60 s
        runtime.wake("probe")
        time.sleep(0.2)
        assert len(cycles) == 2
    finally:
        end(runtime, stop, thread)


def test_a_busy_loop_cycles_again_after_its_busy_pause(tower_yaml: Path) -> None:
    runtime = opened(tower_yaml, busy_pause=0.05)
    cycles: list[float] = []
    stop, thread = spin(runtime, [5, 5, 5], cycles)
    try:
        time.sleep(0.5)
        # three busy cycles and the idle one after them, none waiting the interval
        assert len(cycles) == 4
        assert all(later - earlier >= 0.05 for earlier, later in pairwise(cycles))
    finally:
        end(runtime, stop, thread)
