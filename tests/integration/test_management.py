"""Production management through the `tower` command against a running tower: settings
inherited over three levels and shown with their origin, clones, a trial that waits for
approval (or approves itself) and proposes the full run from what it measured, priority
and fair shares, and the live view."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower
from tests.integration.test_control import cli
from tower.cli import main as tower_main
from tower.loops.matchmaker import fair_order
from tower.model.models import Attempt, Job, JobEvent, Production

pytestmark = pytest.mark.one_database


def _write(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def _payload(per_event: float = 0.0, megabytes: int = 0) -> list[str]:
    """A payload that holds `megabytes` of memory and takes `per_event` seconds an event."""
    return ["${python}", "-c", f"import time; block = bytearray({megabytes} * 2**20); "
            f"time.sleep({per_event} * ${{events}})"]


def _by_key(settings: list[dict[str, Any]]) -> dict[str, tuple[Any, str]]:
    return {row["key"]: (row["value"], row["from"]) for row in settings}


def test_three_levels_of_inheritance_shown_with_origins_then_cloned(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower()
    requests = _write(
        tmp_path / "family.yaml",
        {"name": "base", "software": "sim 2.1", "command": _payload(),
         "parameters": {"source": "Rn222", "detector": "tpc"}, "walltime": "2m",
         "events_total": 4, "events_per_job": 2},
        {"name": "mid", "parent": "base", "parameters": {"component": "cathode"},
         "events_per_job": 1, "priority": 3},
        {"name": "leaf", "parent": "mid", "parameters": {"source": "Co57"},
         "events_total": 3})
    assert len(cli(tower, capsys, "submit", str(requests))["productions"]) == 3
    shown = cli(tower, capsys, "show", "leaf")
    assert shown["lineage"] == ["mid", "base"]
    settings = _by_key(shown["settings"])
    assert settings["parameters.source"] == ("Co57", "leaf")  # overridden
    assert settings["parameters.component"] == ("cathode", "mid")
    assert settings["parameters.detector"] == ("tpc", "base")
    assert settings["software"] == ("sim 2.1", "base")
    assert settings["events_per_job"] == (1, "mid")
    assert settings["events_total"] == (3, "leaf")
    assert settings["cores"] == (1, "default")

    # through the API too, as a remote user would
    url = tower.runtime.config.api.url
    capsys.readouterr()
    assert tower_main(["--url", url, "clone", "leaf", "leaf-th", "--set",
                       "parameters.source=Th232", "--set", "events_total=2", "--json"]) == 0
    [made] = json.loads(capsys.readouterr().out)["productions"]
    assert (made["production"], made["jobs"]) == ("leaf-th", 2)
    clone = _by_key(cli(tower, capsys, "show", "leaf-th")["settings"])
    assert clone["parameters.source"] == ("Th232", "leaf-th")
    assert clone["parameters.component"] == ("cathode", "mid")
    assert clone["events_total"] == (2, "leaf-th")
    assert clone["events_per_job"] == (1, "mid")

    # a bad setting names its key, and nothing is made
    failed = cli(tower, capsys, "clone", "leaf", "leaf-bad", "--set", "events_per_job=ten",
                 expect=2)
    assert failed["field"] == "events_per_job"
    cli(tower, capsys, "show", "leaf-bad", expect=3)


def test_a_trial_waits_for_approval_proposes_the_full_run_and_completes(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower()
    common = {"software": "sim 1", "command": _payload(per_event=0.02, megabytes=96),
              "events_total": 200, "events_per_job": 10, "walltime": "2m"}
    requests = _write(
        tmp_path / "trials.yaml",
        {**common, "name": "manual", "trial": {"events": 20, "target_walltime": 6}},
        {**common, "name": "auto",
         "trial": {"events": 20, "target_walltime": 6, "approve": "auto", "tune": "set"}})
    made = cli(tower, capsys, "submit", str(requests))["productions"]
    assert [row["state"] for row in made] == ["trial", "trial"]

    def states() -> dict[str, str]:
        with Session(tower.runtime.engine) as session:
            return {p.name: p.state for p in session.exec(select(Production)).all()}

    tower.drive(lambda: states()["manual"] == "approval", timeout=120)
    waiting = cli(tower, capsys, "requests")["productions"]
    assert [row["name"] for row in waiting] == ["manual"]
    report = cli(tower, capsys, "show", "manual")["trial_report"]
    assert (report["jobs"], report["succeeded"], report["events"]) == (2, 2, 20)
    assert report["peak_memory_mb"] >= 96  # the payload's bytearray, measured by its pilot
    # wall seconds per event as the pilots measured them: 0.02 s of sleep an event at least
    assert report["seconds_per_event"]["median"] >= 0.02
    assert report["usage"]["attempts"] == 2
    proposal = report["proposal"]
    assert 1 <= proposal["events_per_job"] <= 180 and proposal["walltime"] <= 6
    assert proposal["memory"] >= report["peak_memory_mb"]
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(Job).join(Production).where(
            Production.name == "manual")).all().__len__() == 2  # nothing beyond the trial
    capsys.readouterr()
    assert tower_main(["--config", str(tower.home / "tower.yaml"), "show", "manual"]) == 0
    shown = capsys.readouterr().out
    assert "trial: 2/2 jobs succeeded, 20 events" in shown
    assert f"proposal: events_per_job {proposal['events_per_job']}" in shown

    approved = cli(tower, capsys, "approve", "manual", "--tune", "--note", "looks fine")
    assert approved["state"] == "active"
    assert approved["jobs_made"] == -(-180 // proposal["events_per_job"])
    tower.drive(tower.all_ended, timeout=180)

    with Session(tower.runtime.engine) as session:
        for name in ("manual", "auto"):
            production = session.exec(select(Production).where(
                Production.name == name)).one()
            jobs = session.exec(select(Job).where(Job.production_id == production.id)
                                .order_by(col(Job.index))).all()
            assert {job.state for job in jobs} == {"done"}
            # one stream: indices and events continue from the trial, seeds all differ
            assert [job.index for job in jobs] == list(range(len(jobs)))
            starts = [job.first_event for job in jobs]
            assert starts == [sum(job.events for job in jobs[:i]) for i in range(len(jobs))]
            assert sum(job.events for job in jobs) == 200
            assert len({job.seed for job in jobs}) == len(jobs)
            tuned = production.trial_report["proposal"]["events_per_job"]
            assert production.events_per_job == tuned
            assert max(job.events for job in jobs[production.trial_jobs:]) == min(tuned, 180)
        auto = session.exec(select(Production).where(Production.name == "auto")).one()
        assert auto.decided_by == "trial (every job succeeded)"


def test_a_high_priority_production_submitted_later_starts_first(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower()
    big = _write(tmp_path / "big.yaml", {
        "name": "big", "software": "sim 1", "command": _payload(per_event=0.05),
        "events_total": 40, "events_per_job": 1, "walltime": "2m"})
    urgent = _write(tmp_path / "urgent.yaml", {
        "name": "urgent", "software": "sim 1", "command": _payload(per_event=0.05),
        "events_total": 4, "events_per_job": 1, "walltime": "2m", "priority": 10})
    cli(tower, capsys, "submit", str(big))
    tower.running_attempt(timeout=60)
    cli(tower, capsys, "submit", str(urgent))
    with Session(tower.runtime.engine) as session:
        waiting = set(session.exec(select(Job.id).where(Job.state == "defined")).all())
    tower.drive(tower.all_ended, timeout=180)
    with Session(tower.runtime.engine) as session:
        starts = {job_id: at for job_id, at in session.exec(
            select(Attempt.job_id, Attempt.started_at).where(Attempt.number == 1)).all()}
        urgent_ids = set(session.exec(select(Job.id).join(Production).where(
            Production.name == "urgent")).all())
    later_big = [starts[job_id] for job_id in waiting - urgent_ids]
    last_urgent = max(starts[job_id] for job_id in urgent_ids)
    # Two pilots of two slots claim side by side: a big job handed out in the same breath
    # as the urgent ones may start a few milliseconds before the last of them, but never
    # more of them than there are other slots (without priority, all would).
    assert later_big and sum(at < last_urgent for at in later_big) <= 3


def test_fair_shares_give_each_group_its_part_whatever_the_priorities() -> None:
    big = [Job(id=i, production_id=1, index=i, seed=i, first_event=i, events=1, priority=9)
           for i in range(10)]
    small = [Job(id=100 + i, production_id=2, index=i, seed=i, first_event=i, events=1)
             for i in range(10)]
    # equal weights: the group already holding 4 places waits until the other catches up
    order = fair_order({"physics": big, "calibration": small}, {"physics": 4}, {}, 8)
    assert [job.production_id for job in order] == [2, 2, 2, 2, 2, 1, 2, 1]
    # calibration weighs 3: it takes three places of every four
    order = fair_order({"physics": big, "calibration": small}, {}, {"calibration": 3.0}, 8)
    assert sum(job.production_id == 2 for job in order) == 6
    # a group with nothing left does not hold the others back
    assert len(fair_order({"physics": big[:2], "calibration": small}, {}, {}, 8)) == 8


def test_watch_follows_a_production_until_it_ends(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower()
    cli(tower, capsys, "submit", str(_write(tmp_path / "w.yaml", {
        "name": "watched", "software": "sim 1", "command": _payload(per_event=0.1),
        "events_total": 6, "events_per_job": 2, "walltime": "2m"})))
    watch = subprocess.Popen(
        [sys.executable, "-m", "tower.cli", "--url", tower.runtime.config.api.url, "watch",
         "watched", "--interval", "0.3", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = [watch.stdout.readline(), watch.stdout.readline()]  # before anything ran
        tower.drive(tower.all_ended, timeout=120)
        out, err = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    frames = [line for line in [*first, *out.splitlines()] if line.startswith("watched")]
    assert "active" in frames[0] and "0/6 events" in frames[0]
    assert "finished" in frames[-1] and "100%" in frames[-1] and "6/6 events" in frames[-1]
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(JobEvent).where(JobEvent.to_state == "done")).all()
