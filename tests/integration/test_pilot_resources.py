"""Real pilots sharing their cores and memory among payloads, measuring each payload's
process tree, and killing a payload that goes over its memory request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower, assert_done_exactly_once
from tests.integration.test_slurm import on_slurm, slurm_site  # noqa: F401 (a fixture)
from tower.model.models import Attempt, Job, Pilot
from tower.retries.outcomes import Outcome

pytestmark = pytest.mark.one_database

HUNGRY = Path(__file__).with_name("hungry.py")
ONE_PILOT = {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}


def hungry_production(directory: Path, name: str, jobs: int, stamps: Path,
                      options: tuple[str, ...] = (), **extra: Any) -> Path:
    request = {
        "name": name, "software": "hungry 1", "events_total": jobs, "events_per_job": 1,
        "walltime": "2m", "outputs": ["out_*.txt"],
        "command": ["${python}", str(HUNGRY), "--name", f"{name}-${{index}}-${{attempt}}",
                    "--stamps", str(stamps), "--cores", "${cores}",
                    "--output-dir", "${output_dir}", *options],
        **extra,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def stamps_of(directory: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in directory.glob("*.json")}


def attempts(tower: LiveTower) -> list[Attempt]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Attempt).order_by(col(Attempt.job_id),
                                                          col(Attempt.number))).all())


def test_four_core_and_one_core_jobs_share_a_pilot_never_beyond_its_cores(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    tower = live_tower(site={"pilot": {"cores": 4, "slots": 4, "walltime": "10m",
                                       "idle_timeout": 3}, "limits": ONE_PILOT})
    tower.submit(hungry_production(tmp_path, "big", 3, stamps, ("--sleep", "0.6"), cores=4))
    tower.submit(hungry_production(tmp_path, "small", 8, stamps, ("--sleep", "0.6"), cores=1))
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=11)

    runs = stamps_of(stamps)
    assert len(runs) == 11
    for name, run in runs.items():
        cores = 4 if name.startswith("big") else 1
        # ${cores} and the environment carry the job's cores, not the pilot's
        assert (run["cores"], run["GRIDTOWER_CORES"], run["OMP_NUM_THREADS"]) == \
            (cores, str(cores), str(cores)), name
    # at every payload's start, the cores of the payloads running then fit the pilot's 4
    for name, run in runs.items():
        busy = [other for other in runs.values()
                if other["start"] <= run["start"] < other["end"]]
        assert sum(other["cores"] for other in busy) <= 4, (name, busy)
    # and the small ones did share it
    most = max(sum(1 for other in runs.values() if other["cores"] == 1
                   and other["start"] <= run["start"] < other["end"]) for run in runs.values())
    assert most >= 2


def test_a_payload_over_its_memory_is_killed_then_retried_with_more(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site={"pilot": {"cores": 2, "slots": 2, "memory": 2000,
                                       "memory_tolerance": 0.1, "walltime": "10m",
                                       "idle_timeout": 3}, "limits": ONE_PILOT})
    over_memory_then_retried(tower, tmp_path)


@pytest.mark.slurm
@pytest.mark.usefixtures("on_slurm")
def test_on_slurm_a_payload_over_its_memory_is_killed_then_retried_with_more(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=slurm_site(
        pilot={"slots": 1, "cores": 1, "memory": 1000, "walltime": "10m", "drain_margin": 5,
               "idle_timeout": 4}, limits=ONE_PILOT))
    over_memory_then_retried(tower, tmp_path)


def over_memory_then_retried(tower: LiveTower, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    # 130 MB: over 100 MB + 10%, within the 150 MB + 10% the standard policy's retry gives
    tower.submit(hungry_production(tmp_path, "hungry", 1, stamps,
                                   ("--allocate-mb", "130", "--hold", "1"), memory=100))
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=1)
    first, second = attempts(tower)
    assert first.outcome == Outcome.OUT_OF_MEMORY and first.signal == 9
    assert "over its limit of 110 MB" in (first.reason or "")
    assert second.outcome == Outcome.SUCCESS and second.max_rss_mb is not None
    assert 130 <= second.max_rss_mb <= 165
    with Session(tower.runtime.engine) as session:
        [job] = session.exec(select(Job)).all()
    assert job.memory == 150
    assert list(stamps_of(stamps)) == [f"hungry-0-{second.number}"]
    # the pilot says how it watches memory (no delegated cgroup v2 on the test machines)
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, first.pilot_id)
    assert pilot is not None and pilot.log_path
    assert "payloads' memory: polling /proc" in Path(pilot.log_path).read_text()


def test_peak_memory_and_cpu_of_a_payload_tree_are_measured(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    tower = live_tower(site={"pilot": {"cores": 2, "slots": 1, "walltime": "10m",
                                       "idle_timeout": 3}, "limits": ONE_PILOT})
    # 150 MB and 1 CPU second in the payload, as much again in a child it starts
    tower.submit(hungry_production(tmp_path, "sized", 1, stamps, (
        "--allocate-mb", "150", "--child-mb", "150", "--hold", "1.5", "--burn", "1",
        "--child-burn", "1")))
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=1)
    [attempt] = attempts(tower)
    assert attempt.max_rss_mb is not None and attempt.cpu_seconds is not None
    assert 300 * 0.9 <= attempt.max_rss_mb <= 300 * 1.1
    assert 2 * 0.9 <= attempt.cpu_seconds <= 2 * 1.1
    assert attempt.wall_seconds is not None and attempt.wall_seconds >= 1.5
