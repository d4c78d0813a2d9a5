"""The pilot's claim-ahead arithmetic, with the real Pilot, client, source and payloads.

When payloads grow past SHORT, the capacity shrinks below what the pilot holds; it
must then ask for nothing (it asked for a negative number: the database queue's
/lease refused it, RabbitMQ's source handed over messages with no work dir free).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from pilots.client import TowerClient
from pilots.payload import Payload
from pilots.pilot import AHEAD, AHEAD_MAX, Pilot, PilotSettings
from pilots.sources import HttpSource


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def a_pilot(tmp_path: Path, slots: int) -> Pilot:
    # any call to this tower fails: the pilot must make none while it has no room
    url = f"http://127.0.0.1:{closed_port()}"
    settings = PilotSettings(
        tower=url, site="local", queue="default", pilot_id="p1", source="http",
        broker_queue="local.default", source_options={}, slots=slots, cores=slots,
        walltime=600, drain_margin=5, idle_timeout=600, heartbeat=60, poll=0.05,
        patience=0.2, scratch=tmp_path / "scratch", storage=tmp_path / "storage")
    client = TowerClient(url, "p1", patience=0.2)
    return Pilot(settings, client, HttpSource(client, "local.default", {}, 0.2))


def hold(pilot: Pilot, count: int) -> None:
    """`count` claimed jobs held by the pilot, as `_start` leaves them (not yet run)."""
    for number in range(len(pilot.running), len(pilot.running) + count):
        claim = {"job": number + 1, "attempt": 1, "production": "toy", "variables": {}}
        work_dir = pilot.free_dirs.pop() if pilot.free_dirs else tmp_dir(pilot)
        payload = Payload(claim, {}, work_dir, pilot.settings.storage)
        pilot.running[payload.key] = payload


def tmp_dir(pilot: Pilot) -> Path:
    """A work dir beyond those the pilot started with, as `_start` makes one."""
    pilot.dirs_made += 1
    return pilot.scratch / f"slot-{pilot.dirs_made - 1}"


def end(pilot: Pilot, count: int) -> None:
    """`count` held payloads ended: their work dirs are free, their reports not yet sent."""
    for payload in list(pilot.running.values())[:count]:
        pilot.free_dirs.append(payload.work_dir)


def test_short_payloads_claim_ahead_and_long_ones_never_ask_below_zero(
        tmp_path: Path) -> None:
    pilot = a_pilot(tmp_path, slots=4)
    pilot.recent.extend([0.5] * 8)
    hold(pilot, 6)
    assert pilot._free(0) == 4 + AHEAD - 6
    hold(pilot, 2)
    assert pilot._free(0) == 0
    pilot.recent.extend([1.5] * 32)  # the median crosses SHORT: capacity 4, 8 held
    assert pilot._free(0) == 0
    end(pilot, 3)
    assert pilot._free(3) == 0  # 5 still held, beyond the capacity: they wait for slots
    end(pilot, 5)
    assert pilot._free(5) == 1


def test_a_pilot_holding_more_than_its_shrunk_capacity_keeps_working(tmp_path: Path) -> None:
    pilot = a_pilot(tmp_path, slots=4)
    pilot.recent.extend([0.5] * 8)
    hold(pilot, 4 + AHEAD)
    pilot.recent.extend([1.5] * 32)
    ended: list[str] = []
    turns = threading.Thread(target=lambda: ended.append(pilot._work()))
    turns.start()
    threading.Timer(1.0, pilot.terminate, ("SIGTERM",)).start()
    turns.join(timeout=30)
    # it turned for a second without asking the (unreachable) tower for anything
    assert ended == ["SIGTERM"]
    assert len(pilot.running) == 4 + AHEAD and not pilot.draining


def test_a_slow_tower_lets_short_payloads_claim_ahead_through_one_round_trip(
        tmp_path: Path) -> None:
    pilot = a_pilot(tmp_path, slots=1)
    pilot.recent.extend([0.002] * 8)
    assert pilot._free(0) == 1 + AHEAD  # no claim timed yet
    pilot.round_trips.extend([0.05] * 4)  # 25 payloads run in one round trip
    assert pilot._free(0) == 1 + 25
    hold(pilot, 30)  # more work dirs than it started with
    assert pilot._free(0) == 0
    pilot.round_trips.extend([5.0] * 32)  # a tower this slow is not followed further
    assert pilot._free(0) == 1 + AHEAD_MAX - 30
    pilot.recent.extend([1.5] * 32)  # long payloads: no claim ahead at all
    assert pilot._free(0) == 0
