"""Real pilots against a live tower, under faults from outside: a job the pilot cannot
prepare, payloads around the claim-ahead threshold, a full site disk, a killed pilot."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower, assert_done_exactly_once, toy_production
from tower.model import fleet
from tower.model.db import transaction
from tower.model.models import Attempt, Job, Pilot, Production
from tower.model.states import JobState, PilotState
from tower.retries import retry
from tower.retries.outcomes import Outcome

ONE_SLOT = {"pilot": {"slots": 1, "walltime": "10m", "idle_timeout": 30},
            "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}}


def attempts(tower: LiveTower) -> list[Attempt]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Attempt).order_by(col(Attempt.id))))


def pilots(tower: LiveTower) -> list[Pilot]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Pilot)))


def change_spec(tower: LiveTower, **changes: Any) -> None:
    """Write the production's spec in the database, past submit's validation."""
    with Session(tower.runtime.engine) as session:
        production = session.exec(select(Production)).one()
        production.spec = {**production.spec, **changes}
        session.add(production)
        session.commit()


def pilot_logs(tower: LiveTower) -> str:
    logs = Path(tower.runtime.config.sites["local"].scratch) / "pilot-logs"
    return "".join(path.read_text(errors="replace") for path in sorted(logs.glob("*.log")))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


#: Specs that pass submission (names like these with '=' or NUL are refused there) and
#: still cannot be prepared at the pilot: a steering file named like the payload's output
#: dir, and a variable past the kernel's limit for one environment string (E2BIG).
BAD_SPECS = {
    "steering file named like the output dir": {"steering": {"output": "{}"}},
    "environment value past the kernel's limit": {"environment": {"BIG": "x" * 200_000}},
}


@pytest.mark.parametrize("bad", list(BAD_SPECS))
def test_a_job_the_pilot_cannot_prepare_is_reported_and_the_pilot_goes_on(
        live_tower: Callable[..., LiveTower], tmp_path: Path, database_url: str,
        bad: str) -> None:
    tower = live_tower(site=ONE_SLOT)
    tower.submit(toy_production(tmp_path, jobs=1))
    with Session(tower.runtime.engine) as session:
        good = dict(session.exec(select(Production)).one().spec)
    change_spec(tower, **BAD_SPECS[bad])

    tower.drive(lambda: any(a.ended_at for a in attempts(tower)), timeout=60)
    # the first; the quick policy may have the pilot claim the job's next attempt already
    failed = attempts(tower)[0]
    assert failed.outcome == Outcome.SETUP and failed.reason
    assert ("cannot start" in failed.reason) or ("preparing the job failed" in failed.reason)

    # the same pilot's slot takes the job's next attempt once the spec is runnable
    change_spec(tower, **{key: good[key] for key in BAD_SPECS[bad]})
    tower.drive(tower.all_ended, timeout=120)
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(Job)).one().state is JobState.DONE
    ran = attempts(tower)
    assert ran[-1].outcome == Outcome.SUCCESS and ran[-1].pilot_id == failed.pilot_id

    # and it still obeys SIGTERM
    [pilot] = [p for p in pilots(tower) if p.id == failed.pilot_id]
    assert pilot.batch_id and alive(int(pilot.batch_id))
    os.kill(int(pilot.batch_id), signal.SIGTERM)
    assert wait_until(lambda: not alive(int(pilot.batch_id or 0)), timeout=30)
    assert "Traceback" not in pilot_logs(tower)


#: A payload of 0.5-1.5 s drawn from its job's seed, writing one small output.
SLEEPER = ("import random, sys, time\n"
           "time.sleep(random.Random(int(sys.argv[1])).uniform(0.5, 1.5))\n"
           "open(sys.argv[2] + '/out_' + sys.argv[3] + '.txt', 'w').write(sys.argv[1])\n")
FOUR_SLOTS = {"pilot": {"slots": 4, "cores": 4, "walltime": "10m", "idle_timeout": 3},
              "limits": {"max_queued": 2, "max_running": 2, "max_per_cycle": 2}}


def sleepers(directory: Path, jobs: int, seed_base: int) -> Path:
    request = {
        "name": "sleepers", "software": "python", "seed_base": seed_base,
        "command": ["${python}", "-c", SLEEPER, "${seed}", "${output_dir}", "${index}"],
        "events_total": jobs, "events_per_job": 1, "walltime": "1m",
        "outputs": ["out_*.txt"],
    }
    path = directory / "sleepers.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


@pytest.fixture(params=["database", "amqp"])
def broker(request: pytest.FixtureRequest) -> str:
    if request.param == "database":
        return "database"
    return str(request.getfixturevalue("amqp_url"))


@pytest.mark.one_database
def test_payloads_around_the_claim_ahead_threshold_lose_no_pilot(
        live_tower: Callable[..., LiveTower], tmp_path: Path, broker: str) -> None:
    # payloads of 0.5-1.5 s: the median of the last ones crosses SHORT (1 s) both ways,
    # and the capacity shrinks below what a pilot holds, many times a run
    jobs, seed = 160, int(os.environ.get("GRIDTOWER_TEST_SEED", "0")) or time.time_ns() % 10**6
    print(f"seed_base={seed}")
    tower = live_tower(site=FOUR_SLOTS, broker=broker)
    tower.submit(sleepers(tmp_path, jobs, seed))
    tower.drive(tower.all_ended, timeout=200, pause=0.1)
    assert_done_exactly_once(tower.runtime.engine, jobs)
    assert {a.outcome for a in attempts(tower)} == {Outcome.SUCCESS}, f"seed_base={seed}"
    # every pilot ends as an idle pilot does, none for an error
    tower.drive(lambda: all(p.state in (PilotState.DONE, PilotState.LOST)
                            for p in pilots(tower)), timeout=60)
    ended = pilots(tower)
    assert all(p.state is PilotState.DONE and (p.message or "").startswith("idle")
               for p in ended), [(p.state, p.message) for p in ended]
    logs = pilot_logs(tower)
    assert " ERROR " not in logs and "Traceback" not in logs, f"seed_base={seed}"


def processes_in(directory: Path) -> dict[int, int]:
    """Live processes working in `directory` or below: pid -> process group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            group = os.getpgid(int(entry.name))
        except OSError:
            continue
        if (cwd + "/").startswith(f"{directory}/") and alive(int(entry.name)):
            found[int(entry.name)] = group
    return found


@pytest.fixture
def reaped() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever it found."""
    groups: list[int] = []
    yield groups
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


@pytest.mark.one_database
def test_a_pilot_killed_with_sigkill_takes_its_payloads_along(
        live_tower: Callable[..., LiveTower], tmp_path: Path, reaped: list[int]) -> None:
    two = {"pilot": {"slots": 2, "walltime": "10m", "idle_timeout": 30},
           "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}}
    tower = live_tower(site=two)
    # each payload is a shell with two sleeps, one in the background: three processes
    tower.submit(toy_production(tmp_path, jobs=2, command=[
        "sh", "-c", "sleep 300 & sleep 300; wait"]))
    scratch = Path(tower.runtime.config.sites["local"].scratch)

    def payloads_run() -> bool:
        return len(processes_in(scratch)) >= 6
    tower.drive(payloads_run, timeout=60)
    running = processes_in(scratch)
    reaped.extend(set(running.values()))
    [pilot] = pilots(tower)
    assert pilot.batch_id

    os.kill(int(pilot.batch_id), signal.SIGKILL)
    gone = wait_until(lambda: not processes_in(scratch), timeout=10)
    assert gone, f"left running: {processes_in(scratch)}"
    assert not any(alive(pid) for pid in running)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own (tmpfs), as a site's storage; unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs (needs root): {exc}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


#: A payload writing an output of 300 kB.
WRITER = ("import sys\n"
          "open(sys.argv[1] + '/big_' + sys.argv[2] + '.bin', 'wb').write(b'x' * 300000)\n")


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if not path.is_dir())


@pytest.mark.one_database
def test_a_full_site_disk_leaves_no_partial_output_and_the_production_completes(
        live_tower: Callable[..., LiveTower], tmp_path: Path, small_disk: Path) -> None:
    site = {"pilot": {"slots": 2, "walltime": "10m", "idle_timeout": 30},
            "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1},
            "storage": str(small_disk)}
    tower = live_tower(
        site=site, health={"cooldown": 1},
        storage={"destinations": {"store": {"url": "local:store", "remove_source": True}},
                 "default": ["store"], "retry_delay": 1})
    request = yaml.safe_load(toy_production(tmp_path, jobs=4).read_text())
    request.update(command=["${python}", "-c", WRITER, "${output_dir}", "${index}"],
                   outputs=["big_*.bin"])
    (tmp_path / "writers.yaml").write_text(yaml.safe_dump(request))
    # the disk is nearly full: no output fits, each copy runs out of space part way
    blocker = small_disk / "blocker"
    blocker.write_bytes(b"b" * 900_000)
    tower.submit(tmp_path / "writers.yaml")

    def failed(count: int) -> Callable[[], bool]:
        return lambda: sum(1 for a in attempts(tower) if a.ended_at) >= count
    tower.drive(failed(3), timeout=60)
    ended = [a for a in attempts(tower) if a.ended_at]
    # nothing of those attempts stays at the site: no partial file, no stage dir's file
    assert files_under(small_disk) == [blocker]
    assert {a.outcome for a in ended} == {Outcome.SETUP}
    assert all("disk is full" in (a.reason or "") for a in ended), [a.reason for a in ended]

    blocker.unlink()  # space comes back: the production completes
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, 4)
    assert files_under(small_disk) == []


def _one_sleeping_pilot(live_tower: Callable[..., LiveTower], tmp_path: Path,
                        reaped: list[int], idle_timeout: int) -> tuple[LiveTower, Path, Any]:
    """A tower whose one pilot of one slot runs one `sleep 300` payload; its processes and
    the pilot's process group are in `reaped`."""
    one = {"pilot": {"slots": 1, "walltime": "10m", "idle_timeout": idle_timeout},
           "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}}
    tower = live_tower(site=one)
    tower.submit(toy_production(tmp_path, jobs=1, command=["sleep", "300"]))
    scratch = Path(tower.runtime.config.sites["local"].scratch)
    tower.drive(lambda: bool(processes_in(scratch)), timeout=60)
    reaped.extend(set(processes_in(scratch).values()))
    [pilot] = pilots(tower)
    assert pilot.batch_id
    reaped.append(os.getpgid(int(pilot.batch_id)))
    return tower, scratch, pilot


@pytest.mark.one_database
def test_cancelling_a_frozen_local_pilot_ends_its_payloads(
        live_tower: Callable[..., LiveTower], tmp_path: Path, reaped: list[int]) -> None:
    tower, scratch, pilot = _one_sleeping_pilot(live_tower, tmp_path, reaped, idle_timeout=30)
    os.kill(int(pilot.batch_id), signal.SIGSTOP)  # it cannot stop its payload itself
    try:
        tower.runtime.batch_system("local").cancel([pilot.batch_id])
        assert wait_until(lambda: not processes_in(scratch), timeout=10), processes_in(scratch)
    finally:
        os.kill(int(pilot.batch_id), signal.SIGCONT)


@pytest.mark.one_database
def test_a_pilot_the_tower_wrote_off_stops_its_payload_and_leaves(
        live_tower: Callable[..., LiveTower], tmp_path: Path, reaped: list[int]) -> None:
    """As the monitor does when a batch system says a pilot's job ended while the pilot
    lives on (ARC's fork back end kills a cancelled job's wrapper, not the pilot): the
    pilot's next heartbeat is refused, and it stops its payload and leaves then, not when
    the payload ends."""
    tower, scratch, pilot = _one_sleeping_pilot(live_tower, tmp_path, reaped, idle_timeout=300)
    with transaction(tower.runtime.engine) as session:
        message = "batch job ended (KILLED) without a goodbye"
        assert fleet.lose(session, [pilot.id], message)
        retry.lose_pilot_work(session, tower.runtime.config, pilot.id, Outcome.PILOT_KILLED,
                              message)
    assert wait_until(lambda: not processes_in(scratch) and not alive(int(pilot.batch_id or 0)),
                      timeout=30), processes_in(scratch)
    assert "the tower refused it: heartbeat: HTTP 409" in pilot_logs(tower)
