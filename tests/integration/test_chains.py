"""Productions split by their input files, chains of productions, and lineage (issue 22)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func
from sqlmodel import Session, col, select

from catalog import files, lineage
from catalog.models import CatalogFile, Dataset, FileParent, Replica
from tests.conftest import write_home
from tests.e2e.test_cli import tower
from tests.integration.conftest import (
    EXAMPLES,
    LiveTower,
    assert_tally_matches,
    submit,
    toy_production,
)
from tower.config import load_config
from tower.errors import SpecError
from tower.loops import matchmaker
from tower.management import chains, productions, why
from tower.model.db import bulk_insert, make_engine, transaction
from tower.model.models import Job, JobEvent, JobInput, Pilot, Production
from tower.model.states import JobState, PilotState, move_jobs
from tower.runtime import Runtime
from web.app import create_app

#: The command of a job that writes what it sees: its input dir, and ${inputs}.
SEEING = ["${python}", "-c",
          "import json, os, sys; json.dump({'dir': sorted(os.listdir(sys.argv[1])), "
          "'inputs': json.loads(sys.argv[2])}, open(sys.argv[3], 'w'))",
          "${input_dir}", "${inputs}", "${output_dir}/seen_${index}.json"]


def data_site(home: Path) -> dict[str, Any]:
    """The local site reading input data from the `store` destination."""
    return {"data": {"destination": "store", "path": str(home / "store")}}


def a_dataset(session: Session, home: Path, name: str, count: int, events: int | None = 100,
              on_disk: bool = True) -> list[str]:
    """`count` files cataloged in a new dataset `name`, each with a good replica at the
    `store` destination (written there, unless `on_disk` is False); their LFNs."""
    dataset = Dataset(name=name, meta={})
    session.add(dataset)
    session.flush()
    assert dataset.id is not None
    lfns = []
    for number in range(count):
        content = f"{name} file {number}\n".encode()
        entry = CatalogFile(dataset_id=dataset.id, lfn=f"/{name}/f_{number:05d}.dat",
                            name=f"f_{number:05d}.dat", size=len(content),
                            adler32=f"{zlib.adler32(content):08x}", events=events, attempt=1,
                            meta={})
        session.add(entry)
        session.flush()
        if on_disk:
            path = home / "store" / name / entry.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        files.add_replica(session, entry, "store", f"file://{home}/store/{entry.lfn}")
        lfns.append(entry.lfn)
    return lfns


def request(directory: Path, *documents: dict[str, Any], name: str = "request") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def reco(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    """A step that summarizes each CSV of `upstream` with the example toyreco.py."""
    return {"name": name, "software": "toyreco 1.0",
            "command": ["${python}", str(EXAMPLES / "toyreco.py"), "--steering", "reco.json",
                        "--output-dir", "${output_dir}"],
            "steering": {"reco.json": '{"inputs": ${inputs}, "output": "summary_${index}.json"}'},
            "inputs": [{"production": upstream, "outputs": "decays_*.csv"}],
            "walltime": "5m", "outputs": ["summary_*.json"], **extra}


def consumed(session: Session, production: str) -> Counter[str]:
    """How many jobs of `production` read each file."""
    return Counter(session.exec(select(JobInput.lfn).join(
        Production, col(Production.id) == JobInput.production_id).where(
        Production.name == production)).all())


# -- splitting by input files ----------------------------------------------------------------


@pytest.mark.one_database
def test_ten_files_three_a_job_make_four_jobs_each_seeing_exactly_its_files(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site=data_site(tmp_path / "home"))
    with transaction(tower.runtime.engine) as session:
        lfns = a_dataset(session, tower.home, "raw", 10)
    tower.submit(request(tmp_path, {
        "name": "split3", "software": "python", "command": SEEING, "inputs": ["raw"],
        "split": {"files_per_job": 3}, "walltime": "2m", "outputs": ["seen_*.json"]}))
    with Session(tower.runtime.engine) as session:
        jobs = session.exec(select(Job).order_by(col(Job.index))).all()
        own = chains.job_lfns(session, [job.id for job in jobs if job.id])
    assert len(jobs) == 4
    assert [len(own[job.id]) for job in jobs if job.id] == [3, 3, 3, 1]
    assert sorted(lfn for group in own.values() for lfn in group) == lfns

    tower.drive(tower.all_ended, timeout=180)
    for job in jobs:
        seen = json.loads((tower.home / "store" / "split3" / f"seen_{job.index}.json")
                          .read_text())
        names = sorted(lfn.rsplit("/", 1)[1] for lfn in own[job.id or 0])
        assert seen["dir"] == names
        assert sorted(Path(path).name for path in seen["inputs"]) == names
        assert all(Path(path).parent.name == "inputs" for path in seen["inputs"])
    with Session(tower.runtime.engine) as session:
        # lineage: each job's output names the files it read, with their checksums
        for entry in session.exec(select(CatalogFile).where(
                col(CatalogFile.lfn).like("/split3/%"))).all():
            walked = lineage.walk(session, entry.lfn)
            parents = {row["lfn"]: row["adler32"] for row in walked["file"]["parents"]}
            assert sorted(parents) == own[entry.job_id or 0]
            for lfn, adler32 in parents.items():
                assert session.exec(select(CatalogFile.adler32).where(
                    CatalogFile.lfn == lfn)).one() == adler32


def test_split_by_events_groups_files_until_their_events_reach_the_split(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    with transaction(runtime.engine) as session:
        a_dataset(session, tmp_path, "raw", 7, events=100, on_disk=False)
    submit(runtime, request(tmp_path, {
        "name": "byevents", "software": "python", "command": ["true"], "inputs": ["raw"],
        "split": {"events_per_job": 250}, "walltime": "1m"}))
    with Session(runtime.engine) as session:
        jobs = session.exec(select(Job).order_by(col(Job.index))).all()
        production = session.exec(select(Production)).one()
    # 3 files (300 events) a job; the last, smaller group since the dataset is complete
    assert [job.events for job in jobs] == [300, 300, 100]
    assert production.events_total == 700


def test_split_by_events_refuses_files_without_event_counts(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    with transaction(runtime.engine) as session:
        a_dataset(session, tmp_path, "raw", 3, events=None, on_disk=False)
    with pytest.raises(SpecError, match="split.events_per_job: 3 files of 'raw' carry no "
                                        "event count") as caught:
        submit(runtime, request(tmp_path, {
            "name": "byevents", "software": "python", "command": ["true"], "inputs": ["raw"],
            "split": {"events_per_job": 250}, "walltime": "1m"}))
    assert caught.value.field == "split.events_per_job"


# -- a chain, end to end ---------------------------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.one_database
def test_a_two_step_chain_on_postgresql_and_rabbitmq(
        amqp_url: str, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # two one-slot pilots and a backlog of one job a slot: the simulation runs in waves,
    # and the reconstruction of a wave's files is matched ahead of the waves still to come
    tower = live_tower(site={**data_site(tmp_path / "home"), "backlog": {"per_slot": 1},
                             "pilot": {"slots": 1, "cores": 1, "walltime": "10m",
                                       "drain_margin": 5, "idle_timeout": 3}},
                       broker=amqp_url)
    assert tower.runtime.engine.dialect.name == "postgresql"
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=8, events=300,
                                             sleep=0.001).read_text())
    # the reconstruction ahead of the simulation: each file is summarized as it comes
    tower.submit(request(tmp_path, upstream, reco("reco", "sim", priority=20), name="chain"))
    with Session(tower.runtime.engine) as session:
        assert session.exec(select(func.count()).select_from(Job).join(
            Production, col(Production.id) == Job.production_id).where(
            Production.name == "reco")).one() == 0
    tower.drive(tower.all_ended, timeout=300)

    with Session(tower.runtime.engine) as session:
        ids = dict(session.exec(select(Production.name, Production.id)).all())
        states = Counter(session.exec(select(Job.production_id, Job.state)).all())
        assert states == {(ids["sim"], JobState.DONE): 8, (ids["reco"], JobState.DONE): 8}

        def moves(production: str, state: JobState) -> list[Any]:
            return list(session.exec(select(JobEvent.at).where(
                JobEvent.production_id == ids[production],
                JobEvent.to_state == state)).all())

        # the downstream's first job started before the upstream's last one ended
        assert min(moves("reco", JobState.RUNNING)) < max(moves("sim", JobState.DONE))

        simulated = {entry.lfn: entry.adler32 for entry in session.exec(
            select(CatalogFile).where(col(CatalogFile.lfn).like("/sim/%"))).all()}
        assert len(simulated) == 8
        assert consumed(session, "reco") == dict.fromkeys(simulated, 1)
        summaries = session.exec(select(CatalogFile).where(
            col(CatalogFile.lfn).like("/reco/%"))).all()
        assert len(summaries) == 8
        used = []
        for entry in summaries:
            walked = lineage.walk(session, entry.lfn)
            assert (walked["file"]["job"], walked["file"]["attempt"]) == (entry.job_id, 1)
            [parent] = walked["file"]["parents"]
            assert simulated[parent["lfn"]] == parent["adler32"]
            [above] = walked["ancestors"]
            assert above["lfn"] == parent["lfn"] and above["parents"] == []
            used.append(parent["lfn"])
            # and what the job read is what the summary says it read
            summary = json.loads((tower.home / "store" / "reco" / entry.name).read_text())
            assert summary["inputs"] == [parent["lfn"].rsplit("/", 1)[1]]
            assert summary["events"] == 300
        assert sorted(used) == sorted(simulated)
        down = lineage.walk(session, next(iter(simulated)))["descendants"]
        assert len(down) == 1 and down[0]["lfn"].startswith("/reco/summary_")
        # the chain as `tower show` has it
        steps = productions.describe(session, "reco")["chain"]
        assert [(step["production"], step["files_consumed"], step["ended"])
                for step in steps] == [("sim", 0, True), ("reco", 8, True)]
    # and as the production's page has it
    page = create_app(tower.runtime).test_client().get("/productions/reco").get_data(
        as_text=True)
    rows = page.split('<table id="chain">', 1)[1].split("</table>", 1)[0]
    assert rows.index('data-step="sim"') < rows.index('data-step="reco" class="current"')
    assert '<td class="num" data-key="files_consumed">8</td>' in rows
    assert_tally_matches(tower.runtime.engine)


# -- a consumed file superseded ----------------------------------------------------------------


def _cataloged(session: Session, dataset: str, name: str, job_id: int, attempt: int,
               content: bytes) -> CatalogFile:
    """An output registered and copied as the stager does it."""
    entry = files.register(session, dataset, name, len(content),
                           f"{zlib.adler32(content):08x}", job_id, attempt, {"events": 10})
    files.add_replica(session, entry, "store", f"file:///store/{dataset}/{name}")
    return entry


def _through(session: Session, job_id: int, *states: JobState) -> None:
    path = [JobState.DEFINED, JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING,
            JobState.STAGING, JobState.DONE]
    for current, target in zip(path, path[1:], strict=False):
        if current == states[-1]:
            break
        move_jobs(session, [job_id], current, target, "test", site="local", attempt=1)


def test_an_upstream_output_superseded_after_a_downstream_job_used_it(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=3).read_text())
    submit(runtime, request(tmp_path, upstream, reco("reco", "sim"), name="chain"))
    with transaction(runtime.engine) as session:
        sim = {job.index: job.id or 0 for job in session.exec(select(Job)).all()}
        for index in (0, 1, 2):
            _cataloged(session, "sim", f"decays_{index}.csv", sim[index], 1, b"first")
        production = productions.get(session, "reco")
        assert chains.feed(session, production) == 3
        made = {lfns[0]: job_id for job_id, lfns in chains.job_lfns(
            session, session.exec(select(Job.id).where(
                Job.production_id == production.id)).all()).items()}
        queued, finished, waiting = (made[f"/sim/decays_{n}.csv"] for n in (0, 1, 2))
        _through(session, queued, JobState.QUEUED)          # at a site: no output yet
        _through(session, finished, JobState.DONE)          # made its output
        _cataloged(session, "reco", "summary_1.json", finished, 1, b"summary")
        # the upstream jobs ran again (a later output of theirs failed to stage): each
        # output superseded by attempt 2
        for index in (0, 1, 2):
            _cataloged(session, "sim", f"decays_{index}.csv", sim[index], 2, b"second")
    with transaction(runtime.engine) as session:
        chains.feed_all(session)
    with Session(runtime.engine) as session:
        jobs = {job.id: job for job in session.exec(select(Job).where(
            Job.production_id == production.id)).all()}
        rows = {row.lfn: row for row in session.exec(select(JobInput).where(
            JobInput.production_id == production.id)).all()}
        # the job at a site is cancelled, its file read by a new job, as it is now
        assert jobs[queued].state == JobState.CANCELLED
        assert "/sim/decays_0.csv changed (now attempt 2" in (jobs[queued].message or "")
        remade = rows["/sim/decays_0.csv"]
        assert remade.job_id not in (queued, finished, waiting)
        assert jobs[remade.job_id].state == JobState.DEFINED and remade.attempt == 2
        # the job that made output is held with the reason; its file stays consumed by it
        assert jobs[finished].state == JobState.HELD
        assert "after this job made its outputs: held" in (jobs[finished].message or "")
        assert rows["/sim/decays_1.csv"].job_id == finished
        assert rows["/sim/decays_1.csv"].attempt == 1
        # a job not yet sent anywhere reads the file as it is now
        assert jobs[waiting].state == JobState.DEFINED
        assert rows["/sim/decays_2.csv"].attempt == 2
        assert consumed(session, "reco") == {f"/sim/decays_{n}.csv": 1 for n in (0, 1, 2)}
    with transaction(runtime.engine) as session:  # nothing more happens on the next cycle
        chains.feed_all(session)
        assert len(session.exec(select(Job).where(Job.production_id == production.id)
                                ).all()) == 4
    assert_tally_matches(runtime.engine)


# -- a chain refused whole at submit -------------------------------------------------------------


def test_a_chain_whose_second_step_template_is_broken_is_refused_whole(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=2).read_text())
    broken = reco("reco", "sim")
    broken["steering"] = {"reco.json": '{"inputs": ${inputs}, "out": "${no_such_thing}"}'}
    path = request(tmp_path, upstream, broken, name="chain")
    with pytest.raises(SpecError) as caught:
        submit(runtime, path)
    assert "production reco: steering.reco.json: ${no_such_thing} is not defined" in str(
        caught.value)
    assert caught.value.field == "steering.reco.json"
    with Session(runtime.engine) as session:
        assert session.exec(select(Production)).all() == []
        assert session.exec(select(Job)).all() == []


@pytest.mark.parametrize(("documents", "message", "field"), [
    ([reco("reco", "reco")], "inputs[0].production: a production cannot read its own outputs",
     "inputs[0].production"),
    ([reco("a", "b"), reco("b", "a")], "inputs: chain cycle: a <- b <- a", "inputs"),
    ([reco("a", "b"), reco("b", "c"), reco("c", "b")], "chain cycle: b <- c <- b", "inputs"),
    ([reco("reco", "nowhere")], "inputs[0].production: no production named 'nowhere'",
     "inputs[0].production"),
    ([{**reco("reco", "sim"), "inputs": [{"production": "sim", "outputs": "hits_*.root"}]}],
     "inputs[0].outputs: 'hits_*.root' matches none of production sim's outputs",
     "inputs[0].outputs"),
    ([{**reco("reco", "sim"), "inputs": [{"production": "sim", "outputs": "../[x]"}]}],
     "inputs.0.outputs: a file name glob of * and ?", "inputs.0.outputs"),
    ([{**reco("reco", "sim"), "trial": {"events": 1}}], "has no trial", None),
    ([reco(f"s{n}", f"s{n + 1}") for n in range(chains.MAX_STEPS + 1)]
     + [{**reco(f"s{chains.MAX_STEPS + 1}", "sim")}],
     f"a chain of more than {chains.MAX_STEPS} steps", "inputs"),
], ids=["itself", "cycle", "cycle-above", "missing", "no-match", "bad-pattern", "trial",
        "too-long"])
def test_hostile_chains_are_refused_naming_the_field(
        make_runtime: Callable[..., Runtime], tmp_path: Path, documents: list[dict[str, Any]],
        message: str, field: str | None) -> None:
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=2).read_text())
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        submit(runtime, request(tmp_path, upstream, *documents, name="hostile"))
    if field is not None:
        assert caught.value.field == field
    with Session(runtime.engine) as session:
        assert session.exec(select(Production)).all() == []


# -- lineage ---------------------------------------------------------------------------------


def test_lineage_through_three_steps_both_directions(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    with transaction(runtime.engine) as session:
        gen1, gen2 = a_dataset(session, tmp_path, "gen", 2, on_disk=False)
        [sim1, sim2] = a_dataset(session, tmp_path, "sim", 2, on_disk=False)
        [rec1] = a_dataset(session, tmp_path, "rec", 1, on_disk=False)
        entries = {entry.lfn: entry for entry in session.exec(select(CatalogFile)).all()}

        def made(lfn: str, *parents: str) -> None:
            lineage.record(session, entries[lfn],
                           [(parent, entries[parent].adler32) for parent in parents])

        made(sim1, gen1)
        made(sim2, gen1, gen2)
        made(rec1, sim1, sim2)
    with Session(runtime.engine) as session:
        top = lineage.walk(session, gen1)
        assert top["ancestors"] == []
        assert [(row["lfn"], row["depth"]) for row in top["descendants"]] == [
            (sim1, 1), (sim2, 1), (rec1, 2)]
        bottom = lineage.walk(session, rec1)
        assert bottom["descendants"] == []
        assert [(row["lfn"], row["depth"]) for row in bottom["ancestors"]] == [
            (sim1, 1), (sim2, 1), (gen1, 2), (gen2, 2)]
        assert [parent["lfn"] for parent in bottom["file"]["parents"]] == [sim1, sim2]
        middle = lineage.walk(session, sim2)
        assert [row["lfn"] for row in middle["ancestors"]] == [gen1, gen2]
        assert [row["lfn"] for row in middle["descendants"]] == [rec1]
        for row in middle["ancestors"]:
            assert row["adler32"] == entries[row["lfn"]].adler32
    with transaction(runtime.engine) as session:  # a newer attempt's parents replace them
        lineage.record(session, session.exec(select(CatalogFile).where(
            CatalogFile.lfn == rec1)).one(), [(sim1, entries[sim1].adler32)])
    with Session(runtime.engine) as session:
        assert [row["lfn"] for row in lineage.walk(session, rec1)["ancestors"]] == [sim1, gen1]
        assert session.exec(select(func.count()).select_from(FileParent)).one() == 4

    # the API and the CLI answer the same walk
    client = create_app(runtime).test_client()
    with Session(runtime.engine) as session:
        walked = lineage.walk(session, sim2)
    assert client.get("/api/v1/catalog/lineage", query_string={"lfn": sim2}).json == walked
    missing = client.get("/api/v1/catalog/lineage", query_string={"lfn": "/no/such"})
    assert missing.status_code == 404 and missing.json["field"] == "lfn"  # type: ignore[index]
    assert client.get("/api/v1/catalog/lineage").status_code == 400
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_")}
    config = str(tmp_path / "home" / "tower.yaml")
    answer = subprocess.run([sys.executable, "-m", "tower.cli", "--config", config, "catalog",
                             "lineage", sim2, "--json"], capture_output=True, text=True,
                            env=environment, timeout=60, check=True)
    assert json.loads(answer.stdout) == walked
    shown = subprocess.run([sys.executable, "-m", "tower.cli", "--config", config, "catalog",
                            "lineage", sim2], capture_output=True, text=True, env=environment,
                           timeout=60, check=True).stdout.splitlines()
    assert [line.split()[:2] for line in shown] == [
        ["-1", gen1], ["-1", gen2], ["+0", sim2]]  # rec1 no longer reads it


# -- large and interrupted ---------------------------------------------------------------------


@pytest.mark.one_database
def test_a_ten_thousand_file_dataset_is_consumed_once_in_bounded_cycles(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    count = chains.FEED_LIMIT + 1
    with transaction(runtime.engine) as session:
        dataset = Dataset(name="big", meta={})
        session.add(dataset)
        session.flush()
        bulk_insert(session, CatalogFile, [
            {"dataset_id": dataset.id, "lfn": f"/big/f_{n:05d}", "name": f"f_{n:05d}",
             "size": 1, "adler32": "00020002", "events": 1, "attempt": 1, "meta": {}}
            for n in range(count)])
        ids = session.exec(select(CatalogFile.id)).all()
        bulk_insert(session, Replica, [
            {"file_id": file_id, "destination": "store", "path": f"big/{file_id}",
             "url": "file:///x", "state": "good"} for file_id in ids])
    submit(runtime, request(tmp_path, {
        "name": "wide", "software": "python", "command": ["true"], "inputs": ["big"],
        "split": {"files_per_job": 2}, "walltime": "1m"}))
    with Session(runtime.engine) as session:
        # the first cycle (at submit) takes FEED_LIMIT files, and no partial group
        assert session.exec(select(func.count()).select_from(Job)).one() == count // 2
    with transaction(runtime.engine) as session:
        assert chains.feed_all(session) == 1
    with transaction(runtime.engine) as session:
        assert chains.feed_all(session) == 0
        assert chains.waiting(session) == 0
    with Session(runtime.engine) as session:
        assert session.exec(select(func.count()).select_from(JobInput)).one() == count
        assert session.exec(select(func.count(func.distinct(JobInput.file_id)))).one() == count


def test_a_cycle_that_dies_midway_consumes_nothing_and_the_next_consumes_once(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    """The tower killed while feeding, as the database sees it: the transaction that made
    the jobs never commits (a fake of the kill: it rolls back the same way)."""
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=4).read_text())
    submit(runtime, request(tmp_path, upstream, reco("reco", "sim"), name="chain"))
    with transaction(runtime.engine) as session:
        for job in session.exec(select(Job)).all():
            _cataloged(session, "sim", f"decays_{job.index}.csv", job.id or 0, 1, b"x")

    class Killed(Exception):
        pass

    with pytest.raises(Killed), transaction(runtime.engine) as session:
        assert chains.feed_all(session) == 4
        raise Killed
    with Session(runtime.engine) as session:
        assert consumed(session, "reco") == {}
    with transaction(runtime.engine) as session:
        assert chains.feed_all(session) == 4
    with transaction(runtime.engine) as session:
        assert chains.feed_all(session) == 0  # and a repeated cycle makes nothing
    with Session(runtime.engine) as session:
        assert consumed(session, "reco") == {f"/sim/decays_{n}.csv": 1 for n in range(4)}
    assert_tally_matches(runtime.engine)


@pytest.mark.one_database
def test_the_tower_killed_while_feeding_a_chain_consumes_each_file_once(
        tmp_path: Path, postgres_url: str) -> None:
    """A real `tower run` killed (SIGKILL) as soon as its feeding of a chain committed (its
    loops may be mid-cycle), twice, with files arriving in between, then a last cycle:
    every upstream file is read by exactly one job. No site is enabled, so the jobs stay
    defined and only the feeding is exercised. (A cycle killed before its commit is the
    rolled-back one of the test above.)"""
    home = tmp_path / "home"
    config = write_home(home, postgres_url, site={"enabled": False}, loops={"interval": 0.2})
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=1).read_text())
    path = request(tmp_path, upstream, reco("reco", "sim"), name="chain")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TOWER_")},
           "TOWER_CONFIG": str(config)}
    tower = [sys.executable, "-m", "tower.cli"]
    subprocess.run([*tower, "submit", str(path)], env=env, check=True, capture_output=True)
    engine = make_engine(load_config(config).database_url)
    count = 3000
    with transaction(engine) as session:
        [sim_job] = session.exec(select(Job.id).where(Job.index == 0)).all()
        dataset = session.exec(select(Dataset.id).where(Dataset.name == "sim")).one()
        bulk_insert(session, CatalogFile, [
            {"dataset_id": dataset, "lfn": f"/sim/decays_{n}.csv", "name": f"decays_{n}.csv",
             "size": 1, "adler32": "00020002", "events": 1, "attempt": 1, "meta": {},
             "job_id": sim_job} for n in range(count)])
        bulk_insert(session, Replica, [
            {"file_id": file_id, "destination": "store", "path": f"sim/{file_id}",
             "url": "file:///x", "state": "good"}
            for file_id in session.exec(select(CatalogFile.id)).all()])

    def consumed_rows() -> int:
        with Session(engine) as session:
            return session.exec(select(func.count()).select_from(JobInput)).one()

    try:
        for _ in range(2):  # killed twice: once early, once as soon as something was made
            running = subprocess.Popen([*tower, "run", "--no-api"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 120
                before = consumed_rows()
                while consumed_rows() == before and running.poll() is None:
                    assert time.monotonic() < deadline, "nothing was fed"
                    time.sleep(0.005)
            finally:
                running.send_signal(signal.SIGKILL)
                running.wait()
            with transaction(engine) as session:  # more files came meanwhile
                more = [{"dataset_id": dataset, "lfn": f"/sim/late_{n}_{count}.csv",
                         "name": f"decays_late_{n}_{count}.csv", "size": 1,
                         "adler32": "00020002", "events": 1, "attempt": 1, "meta": {},
                         "job_id": sim_job} for n in range(500)]
                count += len(more)
                bulk_insert(session, CatalogFile, more)
                bulk_insert(session, Replica, [
                    {"file_id": file_id, "destination": "store", "path": f"sim/{file_id}",
                     "url": "file:///x", "state": "good"}
                    for file_id in session.exec(select(CatalogFile.id).where(
                        col(CatalogFile.lfn).like("/sim/late_%"),
                        ~col(CatalogFile.id).in_(select(Replica.file_id)))).all()])
        with transaction(engine) as session:  # the next cycle takes what is left, once
            chains.feed_all(session)
        with Session(engine) as session:
            reads = consumed(session, "reco")
            assert len(reads) == count and set(reads.values()) == {1}
            jobs = session.exec(select(func.count()).select_from(Job).join(
                Production, col(Production.id) == Job.production_id).where(
                Production.name == "reco")).one()
            assert jobs == count
        assert_tally_matches(engine)
    finally:
        engine.dispose()


def test_each_job_is_brokered_to_a_site_holding_its_own_files(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    home = tmp_path / "home"
    runtime = make_runtime(
        site={"data": {"destination": "store", "path": str(home / "store")}},
        more_sites={"other": {"data": {"destination": "other", "path": str(home / "other")}}},
        storage={"destinations": {"store": "local:store", "other": "local:other"},
                 "default": ["store"], "retry_delay": 1})
    with transaction(runtime.engine) as session:
        lfns = a_dataset(session, tmp_path, "raw", 6, on_disk=False)
        # the odd files live at the other site's storage element only
        for entry in session.exec(select(CatalogFile)).all():
            if int(entry.name[2:7]) % 2:
                session.execute(Replica.__table__.update().where(
                    Replica.__table__.c.file_id == entry.id).values(destination="other"))
        for site in ("local", "other"):
            session.add(Pilot(id=f"pilot-{site}", site=site, state=PilotState.RUNNING,
                              slots=4))
    submit(runtime, request(tmp_path, {
        "name": "spread", "software": "python", "command": ["true"], "inputs": ["raw"],
        "split": {"files_per_job": 1}, "walltime": "1m"}))
    matchmaker.run_once(runtime)
    with Session(runtime.engine) as session:
        own = chains.job_lfns(session, session.exec(select(Job.id)).all())
        sites = {own[job.id or 0][0]: job.site for job in session.exec(select(Job)).all()}
    assert sites == {lfn: "other" if n % 2 else "local" for n, lfn in enumerate(lfns)}


# -- a step waiting for its upstream --------------------------------------------------------------


def test_a_step_whose_jobs_ended_while_its_upstream_runs_waits_for_upstream(
        make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=3).read_text())
    submit(runtime, request(tmp_path, upstream, reco("reco", "sim"), name="chain"))
    with transaction(runtime.engine) as session:
        first = session.exec(select(Job).where(Job.index == 0)).first()
        assert first is not None and first.id is not None
        _through(session, first.id, JobState.DONE)
        _cataloged(session, "sim", "decays_0.csv", first.id, 1, b"first")
        production = productions.get(session, "reco")
        assert chains.feed(session, production) == 1
        [made] = session.exec(select(Job.id).where(Job.production_id == production.id)).all()
        assert made is not None
        _through(session, made, JobState.DONE)
    # Then the step's every job is done, yet sim has two jobs to run: reco waits, and says so
    with Session(runtime.engine) as session:
        phases = {row["name"]: row["phase"] for row in productions.summaries(session)}
        assert phases == {"sim": "active", "reco": "waiting for upstream"}
        assert productions.summaries(session, "reco")[0]["phase"] == "waiting for upstream"
        told = why.explain_production(session, runtime.config, "reco")
        assert told["phase"] == "waiting for upstream"
        assert any("waits for files of sim" in line and "2 of its 3 jobs" in line
                   for line in told["why"]), told["why"]
        job = why.explain(session, runtime.config, made)
        assert any("waits for files of sim" in line for line in job["why"]), job["why"]
    # as the CLI says it
    config = tmp_path / "home" / "tower.yaml"
    status = tower(config, "status", "reco")
    assert status.returncode == 0 and "waiting for upstream" in status.stdout, status
    told_cli = tower(config, "why", "reco")
    assert told_cli.returncode == 0, told_cli.stderr
    assert told_cli.stdout.startswith("production reco is waiting for upstream")
    assert "waits for files of sim (2 of its 3 jobs have not ended)" in told_cli.stdout
    # and once sim's jobs end (cancelled here), reco is finished
    with transaction(runtime.engine) as session:
        sim = productions.get(session, "sim")
        rest = session.exec(select(Job.id).where(Job.production_id == sim.id,
                                                 Job.state == JobState.DEFINED)).all()
        move_jobs(session, list(rest), JobState.DEFINED, JobState.CANCELLED, "test")
    with Session(runtime.engine) as session:
        phases = {row["name"]: row["phase"] for row in productions.summaries(session)}
        assert phases == {"sim": "finished", "reco": "finished"}
        assert not any("waits for" in line for line in
                       why.explain_production(session, runtime.config, "reco")["why"])


def test_a_remade_job_counts_its_events_once(make_runtime: Callable[..., Runtime],
                                              tmp_path: Path) -> None:
    runtime = make_runtime()
    upstream = yaml.safe_load(toy_production(tmp_path, "sim", jobs=2).read_text())
    submit(runtime, request(tmp_path, upstream, reco("reco", "sim"), name="chain"))
    with transaction(runtime.engine) as session:
        sim = {job.index: job.id or 0 for job in session.exec(select(Job)).all()}
        for index in (0, 1):
            _cataloged(session, "sim", f"decays_{index}.csv", sim[index], 1, b"first")
        production = productions.get(session, "reco")
        assert chains.feed(session, production) == 2
        assert production.events_total == 20
        for job_id in session.exec(select(Job.id).where(
                Job.production_id == production.id)).all():
            _through(session, job_id or 0, JobState.QUEUED)
        # sim's first output superseded: the job at a site reading it is cancelled, remade
        _cataloged(session, "sim", "decays_0.csv", sim[0], 2, b"second")
    with transaction(runtime.engine) as session:
        chains.feed_all(session)
    with Session(runtime.engine) as session:
        production = productions.get(session, "reco")
        states = Counter(session.exec(select(Job.state).where(
            Job.production_id == production.id)).all())
        assert states == {JobState.CANCELLED: 1, JobState.QUEUED: 1, JobState.DEFINED: 1}
        assert production.events_total == 20
        assert productions.summaries(session, "reco")[0]["events_total"] == 20
