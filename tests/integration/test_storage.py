"""Output staging to real SFTP destinations, held output while one is down, corrupted copies,
the post step, and input data: brokering to the site that holds it, or staging it in."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update
from sqlmodel import Session, select

from catalog import files
from catalog.models import CatalogFile, Dataset, Replica
from tests.cluster import SshDaemon
from tests.integration.conftest import LiveTower, assert_done_exactly_once
from tests.integration.test_failures import RETRY, attempts_by_job, decisions, flaky_production
from tower.loops import stager
from tower.management import productions
from tower.model.db import insert_missing, transaction
from tower.model.models import Attempt, Job, Output, StageIn
from tower.retries.outcomes import Outcome

TIMEOUT = 3


def sftp_destination(server: SshDaemon, root: Path, **more: Any) -> dict[str, Any]:
    access = server.server
    return {"url": f"sftp://{access.user}@{access.host}:{access.port}{root}",
            "key_file": str(access.key_file), "known_hosts": str(access.known_hosts),
            "timeout": TIMEOUT, **more}


def adler32(path: Path) -> str:
    return f"{zlib.adler32(path.read_bytes()):08x}"


def storage(destinations: dict[str, Any], default: list[str]) -> dict[str, Any]:
    return {"destinations": destinations, "default": default, "retry_delay": 1}


def replicas_match_disk(tower: LiveTower, roots: dict[str, Path]) -> int:
    """Every replica's file on disk has the catalog's size and adler32; returns how many."""
    with Session(tower.runtime.engine) as session:
        rows = session.exec(select(Replica, CatalogFile).where(
            Replica.file_id == CatalogFile.id)).all()
    for replica, entry in rows:
        on_disk = roots[replica.destination] / replica.path
        assert (on_disk.stat().st_size, adler32(on_disk)) == (entry.size, entry.adler32)
        assert replica.state == "good"
    return len(rows)


@pytest.mark.one_database
def test_outputs_go_to_two_sftp_destinations_verified_and_cataloged(
        sftp_server: SshDaemon, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    roots = {"us": tmp_path / "us", "uk": tmp_path / "uk"}
    tower = live_tower(retry=RETRY, storage=storage(
        {name: sftp_destination(sftp_server, root) for name, root in roots.items()},
        ["us", "uk"]))
    tower.submit(flaky_production(tmp_path, jobs=6))
    tower.drive(tower.all_ended, timeout=90)

    assert_done_exactly_once(tower.runtime.engine, jobs=6)
    assert replicas_match_disk(tower, roots) == 12


@pytest.mark.one_database
def test_a_destination_down_mid_production_holds_outputs_until_it_returns(
        sftp_server: SshDaemon, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    roots = {"us": tmp_path / "us", "uk": tmp_path / "uk"}
    tower = live_tower(retry=RETRY, storage=storage(
        {"us": f"local:{roots['us']}", "uk": sftp_destination(sftp_server, roots["uk"])},
        ["us", "uk"]))
    tower.submit(flaky_production(tmp_path, jobs=6, sleep=0.5))
    tower.drive(lambda: tower.counts().get("done", 0) >= 1, timeout=60)
    sftp_server.stop()

    def held_for_uk() -> bool:
        with Session(tower.runtime.engine) as session:
            [row] = productions.summaries(session, "flaky")
        held = row["outputs_waiting"]
        # tried already: at us, not at uk
        return ("us" not in held and held.get("uk", {}).get("outputs", 0) >= 2
                and bool(held["uk"]["last_error"]))

    # the jobs run on; their outputs reach us, and wait at the site for uk
    tower.drive(held_for_uk, timeout=90)
    with Session(tower.runtime.engine) as session:
        [row] = productions.summaries(session, "flaky")
        waiting = session.exec(select(Output).where(Output.staged == False)).all()  # noqa: E712
    assert "us" not in row["outputs_waiting"] and row["states"].get("failed") is None
    assert all(output.copied == ["us"] and Path(output.source).exists() for output in waiting)
    assert "uk" in (row["outputs_waiting"]["uk"]["last_error"] or "")

    # a new tower process takes over (the first one "restarted"); the server comes back
    sftp_server.start()
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=6)
    assert replicas_match_disk(tower, roots) == 12


def test_a_corrupted_copy_at_the_destination_is_detected_and_made_again(
        sftp_server: SshDaemon, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    root = tmp_path / "store"
    tower = live_tower(retry=RETRY, storage=storage(
        {"store": sftp_destination(sftp_server, root)}, ["store"]))
    tower.submit(flaky_production(tmp_path, jobs=1))
    # a copy was left at the destination with one byte altered (an interrupted or damaged
    # transfer): it is found differing, and copied again
    damaged = root / "flaky" / "out_0.txt"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("job 0 attempt 9\n")
    tower.drive(tower.all_ended, timeout=60)

    assert_done_exactly_once(tower.runtime.engine, jobs=1)
    assert damaged.read_text() == "job 0 attempt 1\n"
    assert replicas_match_disk(tower, {"store": root}) == 1


#: A payload that writes three outputs, staged by the stager's threads side by side.
THREE_OUTPUTS = ("import sys\n"
                 "for part in 'abc': open(f'{sys.argv[1]}/out_{sys.argv[2]}_{part}.dat', 'w')"
                 ".write(part * 1000)\n")


def test_a_job_whose_outputs_are_staged_in_parallel_is_done(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower()
    request = {"name": "three", "software": "python", "events_total": 8, "events_per_job": 1,
               "command": ["${python}", "-c", THREE_OUTPUTS, "${output_dir}", "${index}"],
               "walltime": "1m", "outputs": ["out_*.dat"]}
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(request))
    tower.submit(path)
    tower.drive(tower.all_ended, timeout=90)
    assert_done_exactly_once(tower.runtime.engine, jobs=8, files_per_job=3)


def test_sources_are_removed_only_when_asked_and_after_verification(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(retry=RETRY, storage=storage(
        {"keep": f"local:{tmp_path / 'keep'}",
         "move": {"url": f"local:{tmp_path / 'move'}", "remove_source": True}},
        ["keep"]))
    tower.submit(flaky_production(tmp_path, name="kept", jobs=2))
    tower.submit(flaky_production(tmp_path, name="moved", jobs=2,
                                  destinations=["keep", "move"]))
    tower.drive(tower.all_ended, timeout=60)
    with Session(tower.runtime.engine) as session:
        sources = {output.job_id: Path(output.source)
                   for output in session.exec(select(Output)).all()}
        moved = {job.id for job in session.exec(select(Job).where(Job.production_id == 2))}
    assert {job for job, path in sources.items() if not path.exists()} == moved
    assert replicas_match_disk(tower, {"keep": tmp_path / "keep",
                                       "move": tmp_path / "move"}) == 6


@pytest.mark.one_database
def test_a_rejected_output_is_marked_bad_and_the_job_retried(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    checker = tmp_path / "check.py"
    # accepts an output only from the second attempt on
    checker.write_text("import sys\ntext = open(sys.argv[1]).read()\n"
                       "sys.exit(0 if 'attempt 1' not in text else 7)\n")
    tower = live_tower(retry=RETRY)
    tower.submit(flaky_production(tmp_path, jobs=1,
                                  post=[sys.executable, str(checker), "${file}"]))
    tower.drive(tower.all_ended, timeout=60)

    [rows] = attempts_by_job(tower).values()
    assert [a.outcome for a in rows] == [Outcome.VALIDATION, Outcome.SUCCESS]
    assert "exit code 7" in (rows[0].reason or "")
    assert [(d.rule, d.action) for d in decisions(tower)] == [("payload", "retry")]
    with Session(tower.runtime.engine) as session:
        [entry] = session.exec(select(CatalogFile)).all()
        [replica] = session.exec(select(Replica)).all()
    # the catalog holds the second attempt's file, good again
    assert entry.attempt == 2 and replica.state == "good"


def catalog_input(tower: LiveTower, root: Path, destination: str, name: str = "geometry.gdml",
                  data: bytes = b"<gdml>lz</gdml>\n") -> str:
    """Register an input file with one replica at `destination` (whose root is `root`)."""
    path = f"inputs/{name}"
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
    with transaction(tower.runtime.engine) as session:
        insert_missing(session, Dataset, name="inputs", meta={})
        entry = files.register(session, "inputs", name, len(data),
                               f"{zlib.adler32(data):08x}", None, 0, {})
        files.add_replica(session, entry, destination, f"file://{root / path}", path=path)
    return entry.lfn


def reading_production(directory: Path, name: str, lfn: str, jobs: int = 4) -> Path:
    request = {
        "name": name, "software": "reader 1", "events_total": jobs, "events_per_job": 1,
        "walltime": "1m", "inputs": [lfn], "outputs": ["out_*.txt"],
        "command": ["sh", "-c", 'cat "$$1"/* > "$$2/out_$$3.txt"', "reader",
                    "${input_dir}", "${output_dir}", "${index}"],
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


@pytest.mark.one_database
def test_jobs_go_to_the_site_that_holds_their_input_or_it_is_staged_in_first(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("se_a", "se_b", "archive")}
    tower = live_tower(
        site={"data": {"destination": "se_a", "path": str(roots["se_a"])}},
        more_sites={"b": {"pilot_command": ["pilot"],
                          "data": {"destination": "se_b", "path": str(roots["se_b"])}}},
        retry=RETRY,
        storage=storage({name: f"local:{root}" for name, root in roots.items()}, ["archive"]))
    lfn = catalog_input(tower, roots["se_a"], "se_a")
    tower.submit(reading_production(tmp_path, "held", lfn))
    tower.drive(tower.all_ended, timeout=90)
    with Session(tower.runtime.engine) as session:
        sites = {a.site for a in session.exec(select(Attempt)).all()}
    assert sites == {"local"}  # the site whose storage element holds the input
    output = next((tmp_path / "archive" / "held").iterdir())
    assert output.read_bytes() == b"<gdml>lz</gdml>\n"

    # an input held at neither site: staged in to one, and the jobs run there
    other = catalog_input(tower, roots["archive"], "archive", name="fieldmap.dat",
                          data=b"B=1.2T\n")
    tower.submit(reading_production(tmp_path, "staged", other))
    tower.drive(tower.all_ended, timeout=90)
    with Session(tower.runtime.engine) as session:
        [request] = session.exec(select(StageIn)).all()
        replicas = {r.destination for r in session.exec(select(Replica).join(
            CatalogFile, CatalogFile.id == Replica.file_id).where(CatalogFile.lfn == other))}
        staged_sites = {a.site for a in session.exec(select(Attempt).join(
            Job, Job.id == Attempt.job_id).where(Job.production_id == 2)).all()}
    assert request.done and replicas == {"archive", request.destination}
    assert staged_sites == {"local" if request.destination == "se_a" else "b"}
    copy = roots[request.destination] / "inputs" / "fieldmap.dat"
    assert copy.read_bytes() == b"B=1.2T\n"


def test_an_input_the_catalog_lacks_is_refused_at_submit(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    from tower.errors import SpecError

    tower = live_tower(retry=RETRY)
    with pytest.raises(SpecError, match=r"inputs\[0\]: the catalog holds no file or dataset"):
        tower.submit(reading_production(tmp_path, "nothing", "/inputs/absent.dat"))


@pytest.mark.one_database
def test_outputs_of_a_site_reached_by_ssh_are_fetched_over_sftp(
        sftp_server: SshDaemon, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    access = sftp_server.server
    ssh = {"host": access.host, "port": access.port, "user": access.user,
           "key_file": str(access.key_file), "known_hosts": str(access.known_hosts)}
    tower = live_tower(site={"ssh": ssh}, retry=RETRY, storage=storage(
        {"store": {"url": f"local:{tmp_path / 'store'}", "remove_source": True}}, ["store"]))
    tower.submit(flaky_production(tmp_path, jobs=3))
    tower.drive(lambda: tower.counts() == {"staging": 3}, timeout=60, without=("stager",))
    # the stager reads the site's storage through its SSH access: with the server
    # down, nothing can be staged, though the files lie on this very machine
    sftp_server.stop()
    assert stager.run_once(tower.runtime) == 0
    with Session(tower.runtime.engine) as session:
        errors = {output.last_error for output in session.exec(select(Output)).all()}
    assert all(error and f"{access.host}:{access.port}" in error for error in errors)
    sftp_server.start()
    with transaction(tower.runtime.engine) as session:  # no waiting for the retry delay
        session.execute(update(Output).values(next_try_at=None))
    tower.drive(tower.all_ended, timeout=60)

    assert_done_exactly_once(tower.runtime.engine, jobs=3)
    assert replicas_match_disk(tower, {"store": tmp_path / "store"}) == 3
    with Session(tower.runtime.engine) as session:
        sources = [Path(output.source) for output in session.exec(select(Output)).all()]
    # removed at the site once the copy was verified
    assert len(sources) == 3 and not any(path.exists() for path in sources)


def test_outputs_a_dead_tower_was_staging_are_taken_over_and_cataloged_once(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    from tower.runtime import Runtime

    store = tmp_path / "store"
    tower = live_tower(retry=RETRY, storage={**storage({"store": f"local:{store}"}, ["store"]),
                                             "lease": 2})
    tower.submit(flaky_production(tmp_path, jobs=3))
    tower.drive(lambda: tower.counts() == {"staging": 3}, timeout=60, without=("stager",))
    # another tower process leased them, began a copy (a partial file) and died
    dead = Runtime.open(tower.runtime.config, create=False)
    assert len(stager._lease(dead)) == 3
    (store / "flaky").mkdir(parents=True)
    partial = store / "flaky" / ".out_0.txt.deadbeef.part"
    partial.write_text("job 0 at")
    dead.close()
    assert stager.run_once(tower.runtime) == 0  # leased by the dead one, for now

    tower.drive(tower.all_ended, timeout=60)
    assert_done_exactly_once(tower.runtime.engine, jobs=3)
    assert replicas_match_disk(tower, {"store": store}) == 3
    # the dead copy's temporary is swept once older than the lease
    tower.drive(lambda: not partial.exists(), timeout=30)
    assert sorted(os.listdir(store / "flaky")) == ["out_0.txt", "out_1.txt", "out_2.txt"]


def test_a_copy_made_before_a_tower_died_is_found_whole_and_not_made_again(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    roots = {"near": tmp_path / "near", "far": tmp_path / "far"}
    tower = live_tower(retry=RETRY, storage=storage(
        {name: f"local:{root}" for name, root in roots.items()}, ["near", "far"]))
    tower.submit(flaky_production(tmp_path, jobs=1))
    tower.drive(lambda: tower.counts() == {"staging": 1}, timeout=60, without=("stager",))
    with Session(tower.runtime.engine) as session:
        [output] = session.exec(select(Output)).all()
    # a tower copied the output to near, verified, and died before it cataloged anything:
    # the copy is not recorded on the output (only the catalog's transaction records copies)
    made = roots["near"] / "flaky" / output.name
    made.parent.mkdir(parents=True)
    made.write_bytes(Path(output.source).read_bytes())
    before = made.stat().st_ino

    assert stager.run_once(tower.runtime) == 1
    assert made.stat().st_ino == before  # found whole, not copied again
    with Session(tower.runtime.engine) as session:
        [output] = session.exec(select(Output)).all()
    assert output.staged and output.copied == ["near", "far"]
    assert_done_exactly_once(tower.runtime.engine, jobs=1)
    assert replicas_match_disk(tower, roots) == 2


def feed_fifo_when(path: Path, data: bytes, ready: Callable[[], bool],
                   timeout: float = 30) -> threading.Thread:
    """In a thread: once `ready()`, write `data` into the FIFO at `path` as soon as a
    reader opens it (gives up after `timeout`, so a reader that never comes hangs nothing)."""
    def feed() -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: no reader yet
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.05)
                continue
            os.set_blocking(descriptor, True)
            with os.fdopen(descriptor, "wb") as writer:
                writer.write(data)
            return

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


@pytest.mark.one_database
def test_a_database_connection_killed_under_the_stager_delays_staging_by_one_cycle(
        live_tower: Callable[..., LiveTower], database_url: str, tmp_path: Path) -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    # the tower's connections carry a name of their own, to be found in pg_stat_activity
    name = f"gt-stager-{os.getpid()}"
    store = tmp_path / "store"
    tower = live_tower(database=f"{database_url}?application_name={name}", retry=RETRY,
                       storage={**storage({"store": f"local:{store}"}, ["store"]),
                                "lease": 600})
    tower.submit(flaky_production(tmp_path, jobs=1))
    tower.drive(lambda: tower.counts() == {"staging": 1}, timeout=60, without=("stager",))
    with Session(tower.runtime.engine) as session:
        [output] = session.exec(select(Output)).all()
    # the output at the site becomes a FIFO, so the copy waits, mid-cycle, for its bytes
    source = Path(output.source)
    data = source.read_bytes()
    source.unlink()
    os.mkfifo(source)

    def leased_and_cut() -> bool:
        with psycopg.connect(database_url, autocommit=True) as admin:
            owner = admin.execute("SELECT lease_owner FROM output").fetchone()
            if owner is None or owner[0] is None:
                return False
            # every connection of the tower, the stager's among them, is terminated
            cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM "
                                "pg_stat_activity WHERE application_name = %s",
                                (name,)).fetchone()
            return cut is not None and cut[0] > 0

    feeder = feed_fifo_when(source, data, leased_and_cut)
    with pytest.raises(OperationalError):
        stager.run_once(tower.runtime)
    feeder.join()

    # the next cycle stages it (its copy at the destination is found whole), well before
    # the 600 s lease would have run out
    source.unlink()
    source.write_bytes(data)
    assert stager.run_once(tower.runtime) == 1
    assert tower.counts() == {"done": 1}
    assert_done_exactly_once(tower.runtime.engine, jobs=1)
