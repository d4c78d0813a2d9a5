"""How a pilot shares its cores and memory out: the real Pilot and payloads (`sleep`
processes), started by its own dispatch, with no tower (none is called)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pilots.pilot import Pilot
from tests.unit.test_pilot_capacity import a_pilot


def shaped(tmp_path: Path, cores: int, memory: int | None = None) -> Pilot:
    pilot = a_pilot(tmp_path, slots=cores)
    settings = dataclasses.replace(pilot.settings, memory=memory)
    return Pilot(settings, pilot.client, pilot.source)


def claim(job: int, cores: int = 1, memory: int | None = None,
          seconds: float = 0.3) -> dict[str, Any]:
    return {"job": job, "attempt": 1, "production": "p", "variables": {},
            "command": ["sleep", str(seconds)], "steering": {}, "environment": {},
            "outputs": [], "walltime": 60, "cores": cores, "memory": memory}


def started(pilot: Pilot) -> set[int]:
    return {job for job, _ in pilot.started}


class Reports:
    """The pilot's reports, collected as its main loop does (which dispatches)."""

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot
        self.seen: dict[int, dict[str, Any]] = {}

    def of(self, job: int) -> dict[str, Any]:
        """Collect reports until `job`'s has come; returns it."""
        while job not in self.seen:
            self.seen.update((report["job"], report)
                             for report in self.pilot._finished(block=True))
        return self.seen[job]


def test_a_waiting_big_job_is_not_overtaken_by_small_ones(tmp_path: Path) -> None:
    pilot = shaped(tmp_path, cores=4)
    for job, cores in ((1, 1), (2, 1), (3, 4), (4, 1)):
        pilot._start(claim(job, cores))
    # job 4 would fit beside 1 and 2, but it came after the 4-core job 3, which waits
    assert started(pilot) == {1, 2} and pilot.used_cores == 2
    assert [payload.job for payload in pilot.waiting] == [3, 4]
    assert pilot._free(0) == 0  # nothing more is claimed while a job waits for cores
    until_ended = Reports(pilot).of
    until_ended(1)
    until_ended(2)
    assert started(pilot) == {3} and pilot.used_cores == 4
    until_ended(3)
    assert started(pilot) == {4}
    until_ended(4)
    assert not pilot.started and not pilot.waiting and pilot.used_cores == 0


def test_memory_is_shared_out_too(tmp_path: Path) -> None:
    pilot = shaped(tmp_path, cores=4, memory=1000)
    for job, memory in ((1, 600), (2, 600), (3, None)):
        pilot._start(claim(job, memory=memory))
    assert started(pilot) == {1} and pilot.used_memory == 600
    Reports(pilot).of(1)
    # a job without a request counts no memory
    assert started(pilot) == {2, 3} and pilot.used_memory == 600


def test_a_job_bigger_than_the_pilot_is_reported_not_run(tmp_path: Path) -> None:
    pilot = shaped(tmp_path, cores=2, memory=1000)
    pilot._start(claim(1, cores=4))
    pilot._start(claim(2, memory=2000))
    pilot._start(claim(3))
    reports = Reports(pilot)
    too_many, too_much = reports.of(1), reports.of(2)
    assert too_many["ending"] == "setup"
    assert "needs 4 cores, the pilot has 2" in too_many["reason"]
    assert too_much["ending"] == "setup" and "needs 2000 MB" in too_much["reason"]
    report = reports.of(3)
    assert report["ending"] == "finished" and report["exit_code"] == 0
    assert report["wall_seconds"] > 0 and report["cpu_seconds"] >= 0


def test_a_payload_is_held_to_its_request_or_else_to_the_pilots_memory(
        tmp_path: Path) -> None:
    pilot = shaped(tmp_path / "a", cores=4, memory=1000)
    pilot._start(claim(1, memory=200))
    pilot._start(claim(2))
    limits = {payload.job: payload.limit_mb for payload in pilot.running.values()}
    assert limits == {1: pytest.approx(220), 2: pytest.approx(1100)}  # tolerance 0.1
    unknown = shaped(tmp_path / "b", cores=4)
    unknown._start(claim(3))
    assert [payload.limit_mb for payload in unknown.running.values()] == [None]
