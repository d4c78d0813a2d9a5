"""Nothing left behind by copies: temporaries of dead copies swept at local and SFTP
destinations, files nothing names reported (and removed) by `catalog verify`, unheld files
at a site's storage swept; a real `tower run` killed mid-copy leaves no partial file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tests.cluster import SshDaemon, free_port
from tests.conftest import write_home
from tests.integration.conftest import LiveTower, assert_done_exactly_once
from tests.integration.test_failures import RETRY, flaky_production
from tests.integration.test_storage import sftp_destination, storage
from tower.config import load_config
from tower.loops import leftovers
from tower.management.catalog_verify import verify_dataset
from tower.model.db import make_engine, transaction
from tower.model.models import Attempt, Output
from tower.runtime import Runtime

#: Long ago, by the destination's clock: a temporary this old belongs to no live copy.
OLD = time.time() - 3600


def plant(path: Path, data: bytes = b"half a file", old: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if old:
        os.utime(path, (OLD, OLD))
    return path


def destination(kind: str, request: pytest.FixtureRequest, root: Path) -> Any:
    if kind == "local":
        return f"local:{root}"
    server: SshDaemon = request.getfixturevalue("sftp_server")
    return sftp_destination(server, root)


@pytest.mark.one_database
@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_listing_and_removing_directories(kind: str, request: pytest.FixtureRequest,
                                          live_tower: Callable[..., LiveTower],
                                          tmp_path: Path) -> None:
    root = tmp_path / "store"
    tower = live_tower(storage=storage({"store": destination(kind, request, root)},
                                       ["store"]))
    transfer = tower.runtime.transfer("store")
    plant(root / "ds" / "a.root", b"12345", old=True)
    (root / "ds" / "sub").mkdir()
    (root / "ds" / "link").symlink_to(root / "ds" / "a.root")

    entries = {entry.name: entry for entry in transfer.listing("ds")}
    assert sorted(entries) == ["a.root", "sub"]  # no symbolic link
    assert (entries["a.root"].size, entries["a.root"].directory) == (5, False)
    assert abs(entries["a.root"].mtime - OLD) < 2 and entries["sub"].directory
    assert transfer.listing("absent") == []

    transfer.remove_directory("ds")  # not empty: left
    transfer.remove_directory("ds/sub")
    transfer.remove_directory("ds/sub")  # gone already: no error
    assert sorted(os.listdir(root / "ds")) == ["a.root", "link"]


@pytest.mark.one_database
@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_the_sweep_takes_only_temporaries_of_dead_copies_and_verify_names_orphans(
        kind: str, request: pytest.FixtureRequest, live_tower: Callable[..., LiveTower],
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    tower = live_tower(retry=RETRY, storage={
        **storage({"store": destination(kind, request, root)}, ["store"]), "lease": 30})
    tower.submit(flaky_production(tmp_path, jobs=2))
    tower.drive(tower.all_ended, timeout=60)
    directory = root / "flaky"
    staged = sorted(os.listdir(directory))
    assert staged == ["out_0.txt", "out_1.txt"]

    dead = plant(directory / ".out_0.txt.0123abcd.part", old=True)
    # a copy in progress: written a moment ago, or of an output under a live lease
    fresh = plant(directory / ".out_1.txt.4567cdef.part")
    leased = plant(directory / ".out_9.txt.89abcdef.part", old=True)
    orphan = plant(directory / "out_7.txt", b"no replica names me")
    stranger = plant(directory / "notes.part", b"not a name the tower makes", old=True)
    with transaction(tower.runtime.engine) as session:
        [first] = session.exec(select(Output).where(Output.name == "out_0.txt")).all()
        session.add(Output(job_id=first.job_id, attempt=first.attempt + 1, name="out_9.txt",
                           source="/nowhere", size=1, adler32="00000001",
                           lease_until=utcnow() + timedelta(hours=1),
                           lease_owner="another-tower"))

    summary = verify_dataset(tower.runtime, "flaky")
    assert summary["good"] == 2
    assert {(row["path"], row["kind"]) for row in summary["leftovers"]} == {
        ("flaky/.out_0.txt.0123abcd.part", "partial"), ("flaky/out_7.txt", "orphan"),
        ("flaky/notes.part", "orphan")}
    assert summary["removed"] == 0 and dead.exists()

    # the stager's sweep (in the directory of an output still to stage) takes the dead
    # copy's temporary only
    assert leftovers.Sweeper().sweep(tower.runtime) == 1
    assert not dead.exists()
    assert fresh.exists() and leased.exists() and orphan.exists() and stranger.exists()

    # verify removes what nothing names when asked; never a replica's file
    fresh.unlink()
    leased.unlink()
    summary = verify_dataset(tower.runtime, "flaky", remove=True)
    assert summary["removed"] == 2
    assert sorted(os.listdir(directory)) == staged
    assert verify_dataset(tower.runtime, "flaky")["leftovers"] == []


@pytest.mark.one_database
def test_unheld_files_at_the_site_storage_are_swept_held_ones_kept(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    store = tmp_path / "store"
    tower = live_tower(retry=RETRY, storage=storage(
        {"kept": f"local:{store}"}, ["kept"]))
    tower.submit(flaky_production(tmp_path, jobs=2))
    tower.drive(tower.all_ended, timeout=60)
    site = Path(tower.runtime.config.sites["local"].storage)
    with Session(tower.runtime.engine) as session:
        outputs = session.exec(select(Output).order_by(col(Output.job_id))).all()
        attempts = session.exec(select(Attempt)).all()
    sources = [Path(output.source) for output in outputs]
    assert all(path.exists() for path in sources)  # no destination asks remove_source
    held_dir = sources[0].parent
    # a move cut short by a full disk, next to a held output
    partial = plant(held_dir / ".out_0.txt.part")
    # the outputs of an attempt whose report was refused (no output row names them)
    lost = plant(site / "flaky" / f"{outputs[1].job_id}.7" / "out_1.txt")
    with transaction(tower.runtime.engine) as session:
        session.add(Attempt(job_id=outputs[1].job_id, number=7, pilot_id="gone",
                            site="local", outcome="lost", ended_at=attempts[0].ended_at))
    # a directory of no attempt of this tower's, and one of an attempt still running
    foreign = plant(site / "flaky" / "12345.1" / "out.txt")
    running = plant(site / "flaky" / f"{outputs[0].job_id}.8" / "out_0.txt")
    with transaction(tower.runtime.engine) as session:
        session.add(Attempt(job_id=outputs[0].job_id, number=8, pilot_id="alive",
                            site="local"))

    assert {(row.path, row.kind) for row in leftovers.everywhere(tower.runtime)} == {
        (str(partial.relative_to(site)), "orphan"), (str(lost.relative_to(site)), "orphan")}
    assert leftovers.Sweeper().sweep(tower.runtime) == 2
    assert not partial.exists() and not lost.exists() and not lost.parent.exists()
    assert all(path.exists() for path in [*sources, foreign, running])

    # a destination asks remove_source now: the staged outputs' site copies are not held
    # (as after a tower killed between cataloging an output and removing its site copy)
    settings = tower.runtime.config.storage.destinations["kept"]
    tower.runtime.config.storage.destinations["kept"] = settings.model_copy(
        update={"remove_source": True})
    assert leftovers.Sweeper().sweep(tower.runtime) == 2
    assert not any(path.exists() for path in sources)
    assert not any(path.parent.exists() for path in sources)
    assert verify_dataset(tower.runtime, "flaky")["good"] == 2


BIG = """import os, sys
size = int(sys.argv[3]) << 20
with open(os.path.join(sys.argv[1], f"big_{sys.argv[2]}.dat"), "wb") as out:
    for _ in range(size >> 20):
        out.write(os.urandom(1 << 20))
"""


def test_a_tower_killed_mid_copy_leaves_no_partial_file_after_its_restart(
        sftp_server: SshDaemon, postgres_url: str, tmp_path: Path) -> None:
    jobs, megabytes = 3, 40
    store = tmp_path / "store"
    home = tmp_path / "home"
    config = write_home(
        home, postgres_url, site={"pilot": {"slots": 3, "walltime": "10m", "idle_timeout": 20},
                                  "limits": {"max_queued": 1, "max_running": 1}},
        # a fixed port: the pilots the first tower started find the second one there
        api={"bind": "127.0.0.1", "port": free_port()}, loops={"interval": 0.2},
        retry=RETRY, storage={**storage({"store": sftp_destination(sftp_server, store)},
                                        ["store"]), "lease": 3})
    script = tmp_path / "big.py"
    script.write_text(BIG)
    request = tmp_path / "big.yaml"
    request.write_text(yaml.safe_dump({
        "name": "big", "software": "big 1", "events_total": jobs, "events_per_job": 1,
        "walltime": "2m", "outputs": ["big_*.dat"],
        "command": ["${python}", str(script), "${output_dir}", "${index}", str(megabytes)]}))
    env = {**os.environ, "TOWER_CONFIG": str(config)}
    tower = [sys.executable, "-m", "tower.cli"]
    subprocess.run([*tower, "submit", str(request)], env=env, check=True, capture_output=True)

    def partials() -> list[Path]:
        return sorted(store.rglob("*.part"))

    first = subprocess.Popen([*tower, "run"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not partials():
            assert time.monotonic() < deadline, "no copy was seen under way"
            assert first.poll() is None, "the tower exited by itself"
            time.sleep(0.005)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    time.sleep(0.5)  # sshd finishes writing what it received
    left = partials()
    assert left, "the kill left no partial file: it did not hit a copy"

    engine = make_engine(load_config(config).database_url)
    second = subprocess.Popen([*tower, "run"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        def settled() -> bool:
            with engine.connect() as connection:
                done = connection.execute(text(
                    "select count(*) from job where state = 'done'")).scalar()
            return done == jobs and not partials()

        deadline = time.monotonic() + 180
        while not settled():
            assert second.poll() is None, second.communicate()[1][-2000:]
            assert time.monotonic() < deadline, (
                f"not settled: partials {partials()} (left by the kill: {left})")
            time.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert_done_exactly_once(engine, jobs=jobs)
    engine.dispose()

    verified = subprocess.run([*tower, "catalog", "verify", "big", "--json"], env=env,
                              capture_output=True, text=True, timeout=120)
    summary = json.loads(verified.stdout)
    assert verified.returncode == 0, summary
    assert (summary["good"], summary["leftovers"]) == (jobs, [])
    assert sorted(os.listdir(store / "big")) == [f"big_{index}.dat" for index in range(jobs)]
    runtime = Runtime.open(load_config(config), create=False)
    try:
        assert leftovers.everywhere(runtime, partial_age=0) == []
    finally:
        runtime.close()
