"""Readiness judged: a loop's pulse against `interval + stall_after`, and a probe that hangs
(a broker that accepts connections and never speaks) holds no other caller."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tower.config import load_config
from tower.loops import liveness
from tower.runtime import Pulse, Runtime


@pytest.fixture
def runtime(tower_yaml: Path) -> Iterator[Runtime]:
    config = load_config(tower_yaml)
    opened = Runtime.open(config.model_copy(update={"loops": config.loops.model_copy(
        update={"interval": 5, "stall_after": 60})}))
    yield opened
    opened.close()


def test_a_loop_is_stuck_once_its_last_cycle_ended_longer_ago_than_interval_and_stall(
        runtime: Runtime) -> None:
    now = time.time()
    runtime.pulses["stager"] = Pulse(born=now - 1000, started=now - 64, ended=now - 64)
    runtime.pulses["monitor"] = Pulse(born=now - 1000, started=now - 66, ended=now - 66)
    runtime.pulses["trials"] = Pulse(born=now - 10)  # no cycle ended yet: counted from birth
    check = liveness.loops(runtime, now)
    assert not check.ok and check.reason == "monitor: no cycle ended for 66s"
    runtime.pulses["monitor"].ended = now - 1
    assert liveness.loops(runtime, now).ok


def test_a_dead_loop_thread_fails_healthz(runtime: Runtime) -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    runtime.pulses["factory"] = Pulse(thread)
    assert liveness.health(runtime)["loops"] == liveness.Check(False, "thread ended: factory")


def test_while_a_probe_hangs_other_callers_get_the_last_answer(tower_yaml: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = load_config(tower_yaml).model_copy(update={
            "broker_url": f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/"})
        runtime = Runtime.open(config)
        try:
            probe = liveness.Probe(runtime)
            first = probe()  # no answer yet: this one waits for the probe
            assert first["broker"].ok is False and first["database"].ok is True
            time.sleep(liveness.PROBE_REUSE)
            hanging = threading.Thread(target=probe)
            hanging.start()
            while not probe._lock.locked():
                time.sleep(0.01)
            assert probe() is first  # the last answer, while the new probe still hangs
            assert hanging.is_alive()
            hanging.join()
        finally:
            runtime.close()
