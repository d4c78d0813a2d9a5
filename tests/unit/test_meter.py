"""The pilot's memory watch on real process trees: what it counts, whom it kills."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pilots.meter import NoMeter, PollingMeter, open_meter

#: A grandchild that leaves the payload's session (setsid) and holds 60 MB.
ESCAPING = ("setsid " + sys.executable + " -c 'import time; b = b\"x\" * (60 * 2**20); "
            "time.sleep(30)' & wait")


def test_a_tree_over_its_limit_is_killed_even_a_child_that_left_its_session() -> None:
    payload = subprocess.Popen(["sh", "-c", ESCAPING], start_new_session=True)
    meter = PollingMeter(period=0.05)
    try:
        meter.start((1, 1), payload.pid, 40)
        payload.wait(timeout=20)  # the watch killed the grandchild, so the shell's wait ends
        usage = meter.stop((1, 1))
    finally:
        meter.close()
        payload.kill()
    assert usage.over_limit
    assert usage.peak_mb is not None and usage.peak_mb > 40


def test_a_tree_within_its_limit_is_measured_and_left_alone() -> None:
    payload = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (30 * 2**20); "
                                "time.sleep(0.5)"], start_new_session=True)
    meter = PollingMeter(period=0.05)
    try:
        meter.start((1, 1), payload.pid, 100)
        assert payload.wait(timeout=20) == 0
        usage = meter.stop((1, 1))
    finally:
        meter.close()
    assert not usage.over_limit and usage.peak_mb is not None and 30 <= usage.peak_mb < 45


@pytest.mark.skipif(Path("/sys/fs/cgroup/cgroup.controllers").exists(),
                    reason="a cgroup v2 machine: the probe may succeed")
def test_without_a_cgroup_v2_memory_controller_the_pilot_polls(
        caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(open_meter("off"), NoMeter)
    with caplog.at_level(logging.WARNING):
        meter = open_meter("cgroup")
    try:
        assert isinstance(meter, PollingMeter) and "polling /proc instead" in caplog.text
    finally:
        meter.close()


def test_a_payload_shorter_than_a_period_costs_no_read_of_proc() -> None:
    """Short payloads (a pilot of short jobs runs hundreds a second) are not summed: the
    thread, woken by the start, finds no payload a period old and reads nothing."""
    payload = subprocess.Popen(["sleep", "0.2"], start_new_session=True)
    meter = PollingMeter(period=5)
    try:
        meter.start((1, 1), payload.pid, 40)
        assert payload.wait(timeout=20) == 0
        usage = meter.stop((1, 1))
    finally:
        meter.close()
    assert usage.peak_mb is None and not usage.over_limit
