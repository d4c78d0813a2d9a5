"""The log store on SQLite and PostgreSQL: a small log in the database, a bigger one in the
store under the tower's own name, each read back whole; an attempt that ended long ago
refused (times from SQLite come back without their zone); logs past the retention gone.
The store at a destination (local, sftp): a big log there, read through the job page's
link, gone with the retention; an unknown destination refused at load."""

from __future__ import annotations

import gzip
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session

from catalog.timeutil import utcnow
from tests.cluster import SshDaemon
from tests.conftest import write_home
from tests.integration.test_reads import production
from tower.config import load_config
from tower.errors import ConfigError, Conflict
from tower.loops import attempt_logs
from tower.model.db import transaction
from tower.model.models import Attempt, AttemptLog, Job
from tower.model.states import ProductionState
from tower.runtime import Runtime
from web.app import create_app


def packed(data: bytes) -> bytes:
    """`data` gzipped as a pilot ships it; with no time in its header, so that packing the
    same bytes twice gives the same bytes (a second apart, the headers differed)."""
    return gzip.compress(data, mtime=0)


def test_logs_are_kept_read_refused_and_pruned(database_url: str, tmp_path: Path) -> None:
    runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url, {"pilot": {
        "slots": 1, "log_bytes": 50_000}}, monitor={"logs_in_database": 500})))
    engine, config = runtime.engine, runtime.config
    job_id = _one_attempt(runtime)
    with transaction(engine) as session:
        session.add(Attempt(job_id=job_id, number=3, pilot_id="p1", site="local",
                            ended_at=utcnow() - timedelta(hours=3)))
    small, big = b"short log\n", os.urandom(20_000)  # gzip cannot shrink it
    with transaction(engine) as session:
        attempt_logs.accept(session, runtime, "p1", job_id, 1, packed(small), 0)
        attempt_logs.accept(session, runtime, "p1", job_id, 2, packed(big), 0)
    with transaction(engine) as session, pytest.raises(Conflict, match="too long ago"):
        attempt_logs.accept(session, runtime, "p1", job_id, 3, packed(small), 0)
    with Session(engine) as session:
        assert attempt_logs.read(session, runtime, job_id, 1) == small
        assert attempt_logs.read(session, runtime, job_id, 2) == big
        kept = attempt_logs.find(session, job_id)
    assert kept[1].data is not None and kept[1].stored is None
    assert kept[2].stored == f"{job_id}.2.log.gz"
    directory = config.home / config.monitor.logs_dir
    assert (directory / kept[2].stored).read_bytes() == packed(big)
    with transaction(engine) as session:
        assert attempt_logs.prune(session, runtime) == 0
        session.execute(update(AttemptLog).values(created_at=utcnow() - timedelta(days=31)))
    with transaction(engine) as session:
        assert attempt_logs.prune(session, runtime) == 2
    assert list(directory.iterdir()) == []
    runtime.close()


def _one_attempt(runtime: Runtime) -> int:
    """A job with running attempts 1 and 2 at site `local`, by pilot p1; its id."""
    with transaction(runtime.engine) as session:
        made = production("p", [], ProductionState.ACTIVE)
        session.add(made)
        session.flush()
        job = Job(production_id=made.id or 0, index=0, seed=1, first_event=0, events=10)
        session.add(job)
        session.flush()
        session.add_all([Attempt(job_id=job.id or 0, number=n, pilot_id="p1", site="local")
                         for n in (1, 2)])
        return job.id or 0


def _stored_read_and_pruned(runtime: Runtime, root: Path) -> None:
    """A big log goes to the destination at `root`, reads back through the job page's link,
    and goes with the retention."""
    job_id = _one_attempt(runtime)
    big = os.urandom(20_000)  # gzip cannot shrink it
    with transaction(runtime.engine) as session:
        entry = attempt_logs.accept(session, runtime, "p1", job_id, 1, packed(big), 0)
    name = f"attempt-logs/{job_id}.1.log.gz"
    assert entry.stored == f"logs:{name}" and entry.data is None
    assert (root / name).read_bytes() == packed(big)
    assert not (runtime.config.home / runtime.config.monitor.logs_dir).exists()
    shown = create_app(runtime).test_client().get(f"/jobs/{job_id}/attempts/1/log")
    assert shown.status_code == 200 and shown.get_data() == big
    with transaction(runtime.engine) as session:
        session.execute(update(AttemptLog).values(created_at=utcnow() - timedelta(days=31)))
    with transaction(runtime.engine) as session:
        assert attempt_logs.prune(session, runtime) == 1
    assert list((root / "attempt-logs").iterdir()) == []
    assert create_app(runtime).test_client().get(
        f"/jobs/{job_id}/attempts/1/log").status_code == 404


def _home(tmp_path: Path, database_url: str, destination: Any) -> Path:
    return write_home(tmp_path / "home", database_url, {"pilot": {"log_bytes": 50_000}},
                      monitor={"logs_in_database": 500, "logs_destination": "logs"},
                      storage={"destinations": {"logs": destination}})


def test_big_logs_at_a_local_destination(database_url: str, tmp_path: Path) -> None:
    runtime = Runtime.open(load_config(_home(tmp_path, database_url, "local:elsewhere")))
    try:
        _stored_read_and_pruned(runtime, tmp_path / "home" / "elsewhere")
    finally:
        runtime.close()


def test_logs_stay_readable_where_they_were_kept_when_the_store_changes(
        database_url: str, tmp_path: Path) -> None:
    config = load_config(_home(tmp_path, database_url, "local:elsewhere"))
    runtime = Runtime.open(config)
    try:
        job_id = _one_attempt(runtime)
        first, second = os.urandom(20_000), os.urandom(20_000)
        with transaction(runtime.engine) as session:
            attempt_logs.accept(session, runtime, "p1", job_id, 1, packed(first), 0)
        runtime.swap_config(config.model_copy(update={"monitor": config.monitor.model_copy(
            update={"logs_destination": None})}))
        with transaction(runtime.engine) as session:
            attempt_logs.accept(session, runtime, "p1", job_id, 2, packed(second), 0)
        directory = config.home / config.monitor.logs_dir
        assert [p.name for p in directory.iterdir()] == [f"{job_id}.2.log.gz"]
        with Session(runtime.engine) as session:
            assert attempt_logs.read(session, runtime, job_id, 1) == first
            assert attempt_logs.read(session, runtime, job_id, 2) == second
        with transaction(runtime.engine) as session:
            session.execute(update(AttemptLog).values(
                created_at=utcnow() - timedelta(days=31)))
        with transaction(runtime.engine) as session:
            assert attempt_logs.prune(session, runtime) == 2
        assert list(directory.iterdir()) == []
        assert list((config.home / "elsewhere" / "attempt-logs").iterdir()) == []
    finally:
        runtime.close()


def test_big_logs_at_an_sftp_destination(database_url: str, sftp_server: SshDaemon,
                                         tmp_path: Path) -> None:
    access = sftp_server.server
    remote = {"url": f"sftp://root@{access.host}:{access.port}{tmp_path / 'remote'}",
              "key_file": str(access.key_file), "known_hosts": str(access.known_hosts),
              "timeout": "5s"}
    runtime = Runtime.open(load_config(_home(tmp_path, database_url, remote)))
    try:
        _stored_read_and_pruned(runtime, tmp_path / "remote")
    finally:
        runtime.close()


def test_an_unknown_logs_destination_is_refused_at_load(tmp_path: Path) -> None:
    path = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}",
                      monitor={"logs_destination": "nowhere"})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "monitor.logs_destination: 'nowhere' is not a destination (known: store)" in str(
        caught.value)
    assert caught.value.field == "monitor.logs_destination"
