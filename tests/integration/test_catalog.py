"""The catalog on SQLite and PostgreSQL: registration exactly once, metadata queries,
export, verification of replicas at real destinations, and the same through the CLI
and the API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from catalog import files, queries
from catalog.models import CatalogFile, Dataset, Replica, ReplicaState
from catalog.verify import Found, verify
from pilots.checksums import adler32_file
from tests.conftest import write_home
from tower import cli
from tower.config import load_config
from tower.errors import Conflict, TransferError
from tower.model.db import transaction
from tower.model.models import Job, Production
from tower.runtime import Runtime
from web.app import create_app

RADON = {"source": "Rn222", "energy": 2.5, "optical": True, "geometry": {"detector": "LZ"}}
POLONIUM = {"source": "Po210", "energy": 5, "optical": False}


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url)))
    yield runtime
    runtime.close()


def production(runtime: Runtime, name: str, software: str, parameters: dict[str, Any],
               jobs: int = 3) -> list[Job]:
    """A production with its dataset and jobs, as `tower submit` writes them."""
    with transaction(runtime.engine) as session:
        made = Production(name=name, events_total=100 * jobs, events_per_job=100, dataset=name,
                          template_hash=f"hash-{name}",
                          spec={"software": software, "parameters": parameters})
        session.add(made)
        session.flush()
        session.add(Dataset(name=name, production_id=made.id,
                            meta={"production": name, "software": software,
                                  "parameters": parameters, "template_hash": f"hash-{name}"}))
        rows = [Job(production_id=made.id, index=index, seed=1000 + index,  # type: ignore[arg-type]
                    first_event=100 * index, events=100 + index) for index in range(jobs)]
        session.add_all(rows)
        session.flush()
        return rows


def meta(job: Job, name: str, software: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """What the stager records with each file."""
    return {"production": name, "software": software, "parameters": parameters,
            "template_hash": f"hash-{name}", "index": job.index, "seed": job.seed,
            "first_event": job.first_event, "events": job.events}


def stage(runtime: Runtime, tmp_path: Path, dataset: str, job: Job, attempt: int,
          content: bytes, software: str = "toysim 1.0",
          parameters: dict[str, Any] = RADON) -> CatalogFile:
    """Put a job's output at the `store` destination and register it, as the stager does."""
    name = f"decays_{job.index}.csv"
    source = tmp_path / f"{dataset}-{job.index}-{attempt}.csv"
    source.write_bytes(content)
    path = f"{dataset}/{name}"
    transfer = runtime.transfer("store")
    info = transfer.put(str(source), path)
    with transaction(runtime.engine) as session:
        entry = files.register(session, dataset, name, info.size, info.adler32,
                               job.id, attempt, meta(job, dataset, software, parameters))  # type: ignore[arg-type]
        files.add_replica(session, entry, "store", transfer.url(path), path=path)
        return entry


def replicas_of(runtime: Runtime, lfn: str) -> list[Replica]:
    with Session(runtime.engine) as session:
        entry = session.exec(select(CatalogFile).where(CatalogFile.lfn == lfn)).one()
        return list(session.exec(select(Replica).where(Replica.file_id == entry.id)).all())


def test_a_repeated_registration_returns_the_same_entry(runtime: Runtime,
                                                       tmp_path: Path) -> None:
    [job] = production(runtime, "rn", "toysim 1.0", RADON, jobs=1)
    first = stage(runtime, tmp_path, "rn", job, 1, b"1,2,3\n")
    again = stage(runtime, tmp_path, "rn", job, 1, b"1,2,3\n")
    assert again.id == first.id and first.events == 100
    with Session(runtime.engine) as session:
        assert len(session.exec(select(CatalogFile)).all()) == 1
        assert len(session.exec(select(Replica)).all()) == 1
    # the same attempt cannot have produced other bytes
    with pytest.raises(Conflict, match="attempt 1 of job"), \
            transaction(runtime.engine) as session:
        files.register(session, "rn", "decays_0.csv", 99, "00000001", job.id, 1, {})  # type: ignore[arg-type]


def test_a_newer_attempt_supersedes_in_place_and_an_older_never_overwrites(
        runtime: Runtime, tmp_path: Path) -> None:
    [job] = production(runtime, "rn", "toysim 1.0", RADON, jobs=1)
    first = stage(runtime, tmp_path, "rn", job, 1, b"first attempt\n")
    with transaction(runtime.engine) as session:
        newer = files.register(session, "rn", "decays_0.csv", 21, "0badc0de", job.id, 2,  # type: ignore[arg-type]
                               {"events": 7, "seed": 5})
        assert newer.id == first.id
    [replica] = replicas_of(runtime, first.lfn)
    # until the newer copy is recorded, the older one is not to be read
    assert replica.state == ReplicaState.BAD and replica.error == "superseded by attempt 2"
    with transaction(runtime.engine) as session:
        entry = session.get(CatalogFile, first.id)
        assert entry is not None
        files.add_replica(session, entry, "store", "file:///elsewhere/decays_0.csv",
                          path="rn/attempt2/decays_0.csv")
    [replica] = replicas_of(runtime, first.lfn)
    assert (replica.state, replica.error, replica.path, replica.url) == (
        ReplicaState.GOOD, None, "rn/attempt2/decays_0.csv", "file:///elsewhere/decays_0.csv")

    with pytest.raises(files.StaleAttempt, match="attempt 1 of job .* attempt 2's output"), \
            transaction(runtime.engine) as session:
        files.register(session, "rn", "decays_0.csv", 14, first.adler32, job.id, 1, {})  # type: ignore[arg-type]
    with Session(runtime.engine) as session:
        [entry] = session.exec(select(CatalogFile)).all()
        assert (entry.attempt, entry.size, entry.adler32, entry.events, entry.meta) == (
            2, 21, "0badc0de", 7, {"events": 7, "seed": 5})


def test_another_jobs_output_name_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    owner, other = production(runtime, "rn", "toysim 1.0", RADON, jobs=2)
    stage(runtime, tmp_path, "rn", owner, 1, b"mine\n")
    with pytest.raises(Conflict, match=rf"/rn/decays_0.csv is registered already, by job "
                                       rf"{owner.id}"), transaction(runtime.engine) as session:
        files.register(session, "rn", "decays_0.csv", 5, "00000001", other.id, 1, {})  # type: ignore[arg-type]


def two_datasets(runtime: Runtime, tmp_path: Path) -> None:
    """rn: 3 files of toysim 1.0 on radon; po: 2 files of toysim 2.0 on polonium."""
    for job in production(runtime, "rn", "toysim 1.0", RADON):
        stage(runtime, tmp_path, "rn", job, 1, b"x" * (10 + job.index))
    for job in production(runtime, "po", "toysim 2.0", POLONIUM, jobs=2):
        stage(runtime, tmp_path, "po", job, 1, b"y" * 20, "toysim 2.0", POLONIUM)


def lfns(runtime: Runtime, *conditions: str) -> list[str]:
    with Session(runtime.engine) as session:
        rows = queries.find(session, queries.parse_conditions(list(conditions)))
    return [row["lfn"] for row in rows]


def test_find_by_metadata(runtime: Runtime, tmp_path: Path) -> None:
    two_datasets(runtime, tmp_path)
    radon = ["/rn/decays_0.csv", "/rn/decays_1.csv", "/rn/decays_2.csv"]
    polonium = ["/po/decays_0.csv", "/po/decays_1.csv"]
    assert lfns(runtime, "software=toysim 1.0") == radon
    assert lfns(runtime, "source=Rn222") == radon
    assert lfns(runtime, "parameters.source=Po210") == polonium
    assert lfns(runtime, "dataset=po") == polonium
    assert lfns(runtime, "production=rn", "template_hash=hash-rn") == radon
    # numbers and booleans match what they spell, nested parameters by their path
    assert lfns(runtime, "energy=2.5") == radon
    assert lfns(runtime, "energy=5.0") == polonium
    assert lfns(runtime, "optical=false") == polonium
    assert lfns(runtime, "geometry.detector=LZ") == radon
    assert lfns(runtime, "seed=1001") == ["/po/decays_1.csv", "/rn/decays_1.csv"]
    # combined, with the file's own columns
    assert lfns(runtime, "source=Rn222", "size>10", "events>=102") == ["/rn/decays_2.csv"]
    assert lfns(runtime, "software=toysim 2.0", "dataset=rn") == []
    assert lfns(runtime, "source=rn222") == []

    with Session(runtime.engine) as session:
        [row] = queries.find(session, queries.parse_conditions(["dataset=rn", "size<11"]))
    assert row["dataset"] == "rn" and row["events"] == 100 and row["attempt"] == 1
    assert row["meta"]["parameters"] == RADON
    assert [r["state"] for r in row["replicas"]] == ["good"]


def test_export_as_rows_and_as_names(runtime: Runtime, tmp_path: Path) -> None:
    two_datasets(runtime, tmp_path)
    with transaction(runtime.engine) as session:
        rejected = session.exec(select(CatalogFile).where(
            CatalogFile.lfn == "/po/decays_1.csv")).one()
        files.mark_bad(session, rejected, "validation: no decays")
    assert [(r.state, r.error) for r in replicas_of(runtime, "/po/decays_1.csv")] == [
        (ReplicaState.BAD, "validation: no decays")]
    with Session(runtime.engine) as session:
        assert queries.export(session, "po", "names") == polonium_names()
        rows = queries.export(session, "po")
        with pytest.raises(queries.QueryError, match="format 'xml'"):
            queries.export(session, "po", "xml")
    first, second = rows
    assert set(first) == {"lfn", "size", "adler32", "events", "replicas"}
    assert (first["lfn"], first["size"], first["events"]) == ("/po/decays_0.csv", 20, 100)
    [replica] = first["replicas"]
    assert replica["destination"] == "store" and replica["path"] == "po/decays_0.csv"
    assert replica["url"].startswith("file://")
    # only good replicas are exported
    assert second["replicas"] == []


def polonium_names() -> list[str]:
    return ["/po/decays_0.csv", "/po/decays_1.csv"]


def test_verify_marks_good_bad_and_missing_and_leaves_an_unreachable_destination(
        runtime: Runtime, tmp_path: Path) -> None:
    jobs = production(runtime, "rn", "toysim 1.0", RADON, jobs=4)
    for job in jobs:
        stage(runtime, tmp_path, "rn", job, 1, f"decays of job {job.index}\n".encode())
    with transaction(runtime.engine) as session:
        for entry in session.exec(select(CatalogFile)).all():
            files.add_replica(session, entry, "far", f"sftp://far/{entry.name}")
    store = Path(runtime.config.path).parent / "store" / "rn"
    with open(store / "decays_1.csv", "ab") as altered:
        altered.write(b"one more line\n")
    (store / "decays_2.csv").unlink()
    with Session(runtime.engine) as session:
        before = {(r.id, r.state, r.checked_at) for r in session.exec(
            select(Replica).where(Replica.destination == "far")).all()}

    def stat(destination: str, path: str) -> Found | None:
        if destination == "far":
            raise TransferError("far: connection refused")
        return runtime.transfer(destination).stat(path)

    with Session(runtime.engine) as session:
        summary = verify(session, "rn", stat)
    assert {key: summary[key] for key in ("replicas", "checked", "good", "bad", "missing")} == {
        "replicas": 8, "checked": 4, "good": 2, "bad": 1, "missing": 1}
    assert summary["unreachable"] == [
        {"destination": "far", "error": "far: connection refused", "replicas": 4}]
    bad, missing = summary["problems"]
    assert (bad["lfn"], bad["state"]) == ("/rn/decays_1.csv", "bad")
    assert "at the destination; cataloged" in bad["error"]
    assert (missing["lfn"], missing["state"], missing["path"]) == (
        "/rn/decays_2.csv", "missing", "rn/decays_2.csv")

    with Session(runtime.engine) as session:
        states = {(r.destination, r.path): (r.state, r.error) for r in session.exec(
            select(Replica)).all()}
        after = {(r.id, r.state, r.checked_at) for r in session.exec(
            select(Replica).where(Replica.destination == "far")).all()}
    assert states[("store", "rn/decays_0.csv")] == (ReplicaState.GOOD, None)
    assert states[("store", "rn/decays_1.csv")][0] == ReplicaState.BAD
    assert states[("store", "rn/decays_2.csv")] == (
        ReplicaState.MISSING, "not found at the destination")
    assert after == before

    # the file put right again is good at the next check
    source = tmp_path / "rn-1-1.csv"
    runtime.transfer("store").put(str(source), "rn/decays_1.csv")
    assert adler32_file(store / "decays_1.csv") == adler32_file(source)
    with Session(runtime.engine) as session:
        again = verify(session, "rn", stat)
    assert (again["good"], again["bad"], again["missing"]) == (3, 0, 1)


def test_verify_keeps_what_the_stager_wrote_meanwhile(runtime: Runtime,
                                                      tmp_path: Path) -> None:
    [job] = production(runtime, "rn", "toysim 1.0", RADON, jobs=1)
    entry = stage(runtime, tmp_path, "rn", job, 1, b"first\n")

    def stat_while_the_stager_supersedes(destination: str, path: str) -> Found | None:
        with transaction(runtime.engine) as session:
            files.register(session, "rn", entry.name, 3, "00000003", job.id, 2, {})  # type: ignore[arg-type]
        return runtime.transfer(destination).stat(path)

    with Session(runtime.engine) as session:
        verify(session, "rn", stat_while_the_stager_supersedes)
    [replica] = replicas_of(runtime, entry.lfn)
    assert (replica.state, replica.error) == (ReplicaState.BAD, "superseded by attempt 2")


def run(capsys: pytest.CaptureFixture[str], runtime: Runtime, *args: str) -> tuple[int, Any]:
    code = cli.main(["--config", str(runtime.config.path), "catalog", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_cli_finds_exports_and_verifies(runtime: Runtime, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    two_datasets(runtime, tmp_path)
    code, found = run(capsys, runtime, "find", "source=Po210", "size>=20")
    assert code == 0 and [row["lfn"] for row in found["files"]] == polonium_names()
    code, error = run(capsys, runtime, "find", "size>lots")
    assert code == 2 and "'size>lots'" in error["message"]
    code, exported = run(capsys, runtime, "export", "po", "--format", "names")
    assert code == 0 and exported == {"dataset": "po", "names": polonium_names()}
    code, exported = run(capsys, runtime, "export", "po")
    assert code == 0 and [row["lfn"] for row in exported["files"]] == polonium_names()
    assert run(capsys, runtime, "export", "nothing")[0] == 3
    code, listed = run(capsys, runtime, "ls")
    assert code == 0 and [row["name"] for row in listed["datasets"]] == ["po", "rn"]

    code, summary = run(capsys, runtime, "verify", "po")
    assert code == 0 and (summary["good"], summary["checked"]) == (2, 2)
    # a file in the dataset's directory that no replica names
    stray = Path(runtime.config.path).parent / "store" / "po" / "stray.csv"
    stray.write_text("nobody's")
    code, summary = run(capsys, runtime, "verify", "po")
    assert code == 1 and summary["good"] == 2 and summary["leftovers"] == [
        {"where": "store", "path": "po/stray.csv", "size": 8, "kind": "orphan"}]
    code, summary = run(capsys, runtime, "verify", "po", "--remove-leftovers")
    assert code == 0 and summary["removed"] == 1 and not stray.exists()
    (Path(runtime.config.path).parent / "store" / "po" / "decays_0.csv").unlink()
    code, summary = run(capsys, runtime, "verify", "po")
    assert code == 1 and (summary["good"], summary["missing"]) == (1, 1)
    assert run(capsys, runtime, "verify", "nothing")[0] == 3

    # a replica at a destination tower.yaml no longer names is unreachable, not bad
    with transaction(runtime.engine) as session:
        entry = session.exec(select(CatalogFile).where(CatalogFile.lfn == "/rn/decays_0.csv")).one()
        files.add_replica(session, entry, "retired", "file:///retired/rn/decays_0.csv")
    code, summary = run(capsys, runtime, "verify", "rn")
    assert code == 1 and summary["good"] == 3 and summary["bad"] == summary["missing"] == 0
    [place] = summary["unreachable"]
    assert place["destination"] == "retired" and "storage.destinations" in place["error"]
    assert replicas_of(runtime, "/rn/decays_0.csv")[1].state == ReplicaState.GOOD


def test_the_api_serves_the_catalog(runtime: Runtime, tmp_path: Path) -> None:
    two_datasets(runtime, tmp_path)
    client = create_app(runtime).test_client()
    listed = client.get("/api/v1/catalog/datasets")
    assert listed.status_code == 200
    assert [row["name"] for row in listed.json["datasets"]] == ["po", "rn"]  # type: ignore[index]
    names = client.get("/api/v1/catalog/datasets/po/files?format=names").json
    assert names == {"dataset": "po", "names": polonium_names()}
    rows = client.get("/api/v1/catalog/datasets/po/files").json
    assert [row["lfn"] for row in rows["files"]] == polonium_names()  # type: ignore[index]
    found = client.get("/api/v1/catalog/find?q=software=toysim 2.0&q=seed=1000").json
    assert [row["lfn"] for row in found["files"]] == ["/po/decays_0.csv"]  # type: ignore[index]
    refused = client.get("/api/v1/catalog/find?q=software>2")
    assert refused.status_code == 400 and refused.json["field"] == "condition"  # type: ignore[index]
    assert client.get("/api/v1/catalog/datasets/none/files").status_code == 404
    checked = client.post("/api/v1/catalog/datasets/rn/verify")
    assert checked.status_code == 200 and checked.json["good"] == 3  # type: ignore[index]
    stray = Path(runtime.config.path).parent / "store" / "rn" / ".decays_0.csv.0123abcd.part"
    stray.write_text("half")
    os.utime(stray, (0, 0))
    refused = client.post("/api/v1/catalog/datasets/rn/verify?remove_leftovers=yes")
    assert refused.status_code == 400
    assert refused.json["field"] == "remove_leftovers"  # type: ignore[index]
    assert stray.exists()
    checked = client.post("/api/v1/catalog/datasets/rn/verify?remove_leftovers=1")
    assert checked.json["removed"] == 1 and not stray.exists()  # type: ignore[index]


def test_the_files_of_a_dataset_are_listed_in_natural_order(
        runtime: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for job in production(runtime, "many", "toysim 1.0", RADON, jobs=12):
        stage(runtime, tmp_path, "many", job, 1, b"z" * 10)
    code, listed = run(capsys, runtime, "ls", "many")
    assert code == 0 and [row["lfn"] for row in listed["files"]] == [
        f"/many/decays_{index}.csv" for index in range(12)]


def test_natural_order_takes_ascii_digits_only() -> None:
    from tower.cli.common import natural

    # '²' is a digit to str.isdigit() and not to int(): it sorts as text, never raises
    assert sorted(["b_10", "b_²", "b_2"], key=natural) == ["b_2", "b_10", "b_²"]
