"""Jobs go only where pilots can hold them (issue 20 item 2): cores, memory and walltime
are matched at submit, by the matchmaker, the factory and the claim; a job grown by a
retry past every site is held; `tower why` says which need did not fit which site.

The test sites: `local`, 2 cores and 2000 MB, and `big`, 8 cores and 16000 MB; both give a
job at most 595 s (walltime 10m, drain margin 5 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlmodel import Session, col, select

from tests.integration.conftest import (
    LiveTower,
    assert_done_exactly_once,
    end_the_one_job,
    submit,
    toy_production,
)
from tower.brokers.broker import Message, queue_name
from tower.errors import SpecError
from tower.loops import factory, matchmaker
from tower.management import why
from tower.model.db import transaction
from tower.model.jobs import fitting as job_rows_fitting
from tower.model.jobs import misfitting as job_rows_misfitting
from tower.model.models import Attempt, Job, JobEvent, Pilot, Production
from tower.model.states import JobState, PilotState, move_jobs
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime
from web.app import create_app

PILOT = {"slots": 2, "walltime": "10m", "drain_margin": 5, "idle_timeout": 3}
LOCAL = {"pilot": {**PILOT, "cores": 2, "memory": 2000}, "backlog": {"min": 20}}
BIG = {"pilot": {**PILOT, "cores": 8, "memory": "16000MB"}, "backlog": {"min": 20}}


@pytest.fixture
def make_runtime(make_runtime: Any) -> Any:
    """Runtimes on one database; each its own home (its own sites.yaml)."""
    def make(home: str = "home", local: dict[str, Any] | None = None,
             more_sites: dict[str, Any] | None = None) -> Runtime:
        return make_runtime(home, site=LOCAL if local is None else local,
                            more_sites={"big": BIG} if more_sites is None else more_sites)

    return make


def job_rows(runtime: Runtime) -> list[Job]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Job).order_by(col(Job.id))).all())


def pilot_rows(runtime: Runtime) -> list[Pilot]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Pilot)).all())


# -- submit -------------------------------------------------------------------------------------

def test_a_job_needing_more_memory_than_any_pilot_has_is_refused_at_submit(
        make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime()
    path = toy_production(tmp_path, memory="64GB")
    expected = ("memory: 65536 MB fits no site; the largest pilots offer 16000 MB "
                "(big/default)")
    with pytest.raises(SpecError) as caught:
        submit(runtime, path)
    assert caught.value.field == "memory" and expected in str(caught.value)
    # through the API: a 400 naming the field, with the same words
    client = create_app(runtime).test_client()
    answer = client.post("/api/v1/productions",
                         json={"text": path.read_text(), "source": "toy.yaml"})
    assert answer.status_code == 400
    assert answer.json["field"] == "memory" and expected in answer.json["message"]
    # through the CLI: exit 2, the file and the field named
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("TOWER_")}
    result = subprocess.run([sys.executable, "-m", "tower.cli", "--config",
                             str(tmp_path / "home" / "tower.yaml"), "submit", str(path)],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 2 and f"{path}: production toy: {expected}" in result.stderr
    assert job_rows(runtime) == []


def test_a_job_needing_more_cores_than_its_allowed_sites_have_is_refused(
        make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime()
    # big has 8 cores, but the production allows only local
    with pytest.raises(SpecError) as caught:
        submit(runtime, toy_production(tmp_path, cores=4, sites=["local"]))
    assert caught.value.field == "cores"
    assert "cores: 4 cores fits no site; the largest pilots offer 2 cores (local/default)" \
        in str(caught.value)
    submit(runtime, toy_production(tmp_path, cores=8))  # big holds it
    assert len(job_rows(runtime)) == 6


def test_a_site_that_declares_no_memory_takes_any(make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime(local={"backlog": {"min": 20}})  # local's memory undeclared
    submit(runtime, toy_production(tmp_path, jobs=2, memory="64GB"))
    matchmaker.run_once(runtime)
    assert {job.site for job in job_rows(runtime)} == {"local"}


# -- the matchmaker and the factory ---------------------------------------------------------

def test_heavy_jobs_are_matched_only_where_they_fit(make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, "cores4", jobs=3, cores=4))
    submit(runtime, toy_production(tmp_path, "memory8g", jobs=3, memory="8GB"))
    submit(runtime, toy_production(tmp_path, "light", jobs=4, memory=500))
    # a retry grew one light job's memory past local's pilots
    with transaction(runtime.engine) as session:
        light = session.exec(select(Production).where(Production.name == "light")).one()
        grown = session.exec(select(Job).where(Job.production_id == light.id)).first()
        assert grown is not None
        session.execute(update(Job).where(col(Job.id) == grown.id).values(memory=3000))
    with Session(runtime.engine) as session:
        # the factory's demand: local could run only the three light jobs not grown
        assert factory.waiting(session, runtime.config.sites["local"], "default") == 3
        assert factory.waiting(session, runtime.config.sites["big"], "default") == 10
    matchmaker.run_once(runtime)
    sites = {job.id: job.site for job in job_rows(runtime)}
    with Session(runtime.engine) as session:
        heavy = session.exec(select(Job.id).join(
            Production, col(Production.id) == Job.production_id).where(
            col(Production.name).in_(["cores4", "memory8g"]))).all()
    assert {sites[job_id] for job_id in heavy} == {"big"}
    assert sites[grown.id] == "big"
    assert set(sites.values()) == {"local", "big"}  # the light ones spread


def test_the_database_conditions_agree_with_the_fit_test_for_every_job(
        make_runtime: Any, tmp_path: Path) -> None:
    """`jobs.fitting` and `jobs.misfitting` (what the matchmaker and the factory ask the
    database) split the jobs exactly as `PilotShape.misfit` does, grown ones included."""
    runtime = make_runtime()
    for name, extra in {"plain": {}, "cores4": {"cores": 4}, "memory1500": {"memory": 1500},
                        "memory4000": {"memory": 4000}, "long": {"walltime": 500}}.items():
        submit(runtime, toy_production(tmp_path, name, jobs=6, **extra))
    grown = [(None, None), (1000, None), (3000, None), (None, 300), (None, 590), (20000, 590)]
    with transaction(runtime.engine) as session:
        for job in session.exec(select(Job)).all():
            memory, walltime = grown[job.index]
            session.execute(update(Job).where(col(Job.id) == job.id)
                            .values(memory=memory, walltime=walltime))
    with Session(runtime.engine) as session:
        needs = matchmaker.production_needs(session)
        rows = session.exec(select(Job)).all()
        for site in ("local", "big"):
            shape = runtime.config.sites[site].pilot
            fit = set(session.exec(select(Job.id).where(job_rows_fitting(shape, needs))).all())
            misfit = set(session.exec(select(Job.id).where(
                job_rows_misfitting(shape, needs))).all())
            expected = {job.id for job in rows if shape.misfit(
                needs[job.production_id].grown(job.memory, job.walltime)) is None}
            assert fit == expected and misfit == {job.id for job in rows} - expected, site
            assert 0 < len(fit) < len(rows)


def test_no_pilot_is_submitted_for_a_backlog_no_pilot_shape_can_run(
        make_runtime: Any, tmp_path: Path) -> None:
    # Given jobs of 1500 MB submitted and queued at local while its pilots had 2000 MB
    before = make_runtime(more_sites={})
    submit(before, toy_production(tmp_path, jobs=4, memory=1500))
    matchmaker.run_once(before)
    queue = queue_name("local", "default")
    assert before.broker.depth(queue) == 4
    # When the site admin shrinks local's pilots to 1000 MB
    after = make_runtime("after", local={**LOCAL, "pilot": {**LOCAL["pilot"], "memory": 1000}},
                         more_sites={})
    # Then the factory submits no pilot for them, cycle after cycle
    for _ in range(3):
        assert factory.run_once(after) == 0
    assert pilot_rows(after) == []
    # and the matchmaker takes them back from local, removes their messages, and places
    # them nowhere
    matchmaker.run_once(after)
    assert {(job.state, job.site) for job in job_rows(after)} == {(JobState.DEFINED, None)}
    assert after.broker.depth(queue) == 0
    for _ in range(2):
        matchmaker.run_once(after)
        assert factory.run_once(after) == 0
    assert pilot_rows(after) == []
    # `tower why` says which need did not fit which site
    with Session(after.engine) as session:
        told = why.explain(session, after.config, job_rows(after)[0].id or 0)["why"]
    assert ("Site local does not fit it: memory: it needs 1500 MB, a pilot gives a job at "
            "most 1000 MB.") in told, told


def test_why_names_the_cores_a_site_lacks(make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, jobs=1, cores=4))
    with Session(runtime.engine) as session:
        told = why.explain(session, runtime.config, job_rows(runtime)[0].id or 0)["why"]
    assert ("Site local does not fit it: cores: it needs 4 cores, a pilot gives a job at "
            "most 2 cores.") in told, told
    assert not any(line.startswith("Site big does not fit") for line in told), told


# -- retries -------------------------------------------------------------------------------------

def out_of_memory(runtime: Runtime, site: str) -> None:
    """The one job ran at `site` and ran out of memory; the policy decides (standard:
    retry with 1.5 times the memory)."""
    end_the_one_job(runtime, site, Outcome.OUT_OF_MEMORY, "out of memory")


def test_a_retry_grown_past_every_site_is_held_with_the_reason(make_runtime: Any,
                                                               tmp_path: Path) -> None:
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, jobs=1, memory=1500, sites=["local"]))
    out_of_memory(runtime, "local")
    [job] = job_rows(runtime)
    assert job.state == JobState.HELD and job.memory is None  # kept what it had
    assert ("memory: 2250 MB fits no site; the largest pilots offer 2000 MB "
            "(local/default)") in (job.message or "")
    with Session(runtime.engine) as session:
        told = why.explain(session, runtime.config, job.id or 0)["why"]
    assert told[0].startswith("Held by rule 'memory' of policy quick") and "2250 MB" in told[0]


def test_a_retry_grown_past_one_site_goes_to_another(make_runtime: Any,
                                                     tmp_path: Path) -> None:
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, jobs=1, memory=1500))
    out_of_memory(runtime, "local")
    [job] = job_rows(runtime)
    assert job.state == JobState.DEFINED and job.memory == 2250
    matchmaker.run_once(runtime)
    [job] = job_rows(runtime)
    assert (job.state, job.site) == (JobState.QUEUED, "big")


# -- the claim ------------------------------------------------------------------------------

def post(client: FlaskClient, pilot: str, action: str, body: dict[str, Any]) -> Any:
    response = client.post(f"/api/v1/pilots/{pilot}/{action}", json=body)
    assert response.status_code == 200, response.json
    return response.json


def pilots_of(runtime: Runtime, **shapes: dict[str, Any]) -> FlaskClient:
    """Registered pilots at local with the shapes given (as the factory records them)."""
    with transaction(runtime.engine) as session:
        for name, shape in shapes.items():
            session.add(Pilot(id=name, site="local", slots=2, walltime=600, **shape))
    client = create_app(runtime).test_client()
    for name in shapes:
        assert client.post(f"/api/v1/pilots/{name}/register", json={}).status_code == 200
    return client


def test_a_claim_refuses_a_job_its_pilot_cannot_hold_and_the_job_is_matched_again(
        make_runtime: Any, tmp_path: Path) -> None:
    runtime = make_runtime(more_sites={})
    submit(runtime, toy_production(tmp_path, "fat", jobs=1, memory=1500))
    submit(runtime, toy_production(tmp_path, "light", jobs=1))
    matchmaker.run_once(runtime)
    # a pilot submitted before sites.yaml gave local 2000 MB, and one submitted since
    client = pilots_of(runtime, old={"cores": 2, "memory": 1000},
                       new={"cores": 2, "memory": 2000})
    messages = post(client, "old", "lease", {"queue": "local.default", "max": 2})["messages"]
    answers = post(client, "old", "claim",
                   {"jobs": [[m["job"], m["attempt"]] for m in messages]})["jobs"]
    [fat, light] = sorted(answers, key=lambda answer: answer["job"])
    assert not fat["granted"]
    assert fat["reason"] == ("does not fit this pilot: memory: it needs 1500 MB, a pilot "
                             "gives a job at most 1000 MB")
    assert light["granted"]  # the refusal is the job's, not the pilot's
    with Session(runtime.engine) as session:
        job = session.get_one(Job, fat["job"])
        assert (job.state, job.site) == (JobState.DEFINED, None)
        assert session.get_one(Pilot, "old").state == PilotState.RUNNING
        assert not session.exec(select(Attempt).where(Attempt.job_id == fat["job"])).all()
    assert post(client, "old", "heartbeat", {"jobs": [[light["job"], light["attempt"]]]}
                )["stop"] == []
    # matched again, and claimed by the pilot that can hold it; the stale copy is refused
    matchmaker.run_once(runtime)
    [message] = post(client, "new", "lease", {"queue": "local.default", "max": 2})["messages"]
    assert message["job"] == fat["job"] and message["attempt"] == fat["attempt"] + 1
    [stale] = post(client, "new", "claim", {"jobs": [[fat["job"], fat["attempt"]]]})["jobs"]
    assert not stale["granted"] and stale["reason"].startswith("stale")
    [granted] = post(client, "new", "claim",
                     {"jobs": [[message["job"], message["attempt"]]]})["jobs"]
    assert granted["granted"] and granted["memory"] == 1500
    with Session(runtime.engine) as session:
        [attempt] = session.exec(select(Attempt).where(Attempt.job_id == fat["job"])).all()
        assert attempt.pilot_id == "new"
        reasons = session.exec(select(JobEvent.reason).where(
            JobEvent.job_id == fat["job"], JobEvent.to_state == JobState.DEFINED)).all()
    assert reasons == [f"refused by pilot old: {fat['reason']}"]


def test_a_claimed_job_that_fits_no_site_any_more_is_held(make_runtime: Any,
                                                          tmp_path: Path) -> None:
    runtime = make_runtime(more_sites={})
    submit(runtime, toy_production(tmp_path, jobs=1, memory=1500))
    # a message from before a retry grew the job past every site's pilots
    with transaction(runtime.engine) as session:
        job = session.exec(select(Job)).one()
        assert job.id is not None
        move_jobs(session, [job.id], JobState.DEFINED, JobState.ASSIGNED, "forced",
                  site="local", attempt=1, memory=4000)
        move_jobs(session, [job.id], JobState.ASSIGNED, JobState.QUEUED, "forced")
    runtime.broker.publish(queue_name("local", "default"),
                           [Message(job=job.id, attempt=1, walltime=300)])
    client = pilots_of(runtime, p1={"cores": 2, "memory": 2000})
    [answer] = post(client, "p1", "claim", {"jobs": [[job.id, 1]]})["jobs"]
    assert not answer["granted"] and "it needs 4000 MB" in answer["reason"]
    [job] = job_rows(runtime)
    assert job.state == JobState.HELD
    assert "it fits no allowed site (memory: 4000 MB fits no site; the largest pilots offer " \
           "2000 MB (local/default)): held" in (job.message or "")
    with Session(runtime.engine) as session:
        told = why.explain(session, runtime.config, job.id or 0)["why"]
    assert told[0].startswith("Held by tower: refused by pilot p1"), told


def test_a_pilot_records_the_shape_it_was_submitted_with(make_runtime: Any,
                                                         tmp_path: Path) -> None:
    runtime = make_runtime(more_sites={})
    submit(runtime, toy_production(tmp_path, jobs=2, memory=1500))
    matchmaker.run_once(runtime)
    assert factory.run_once(runtime) == 1
    [pilot] = pilot_rows(runtime)
    assert (pilot.cores, pilot.memory, pilot.walltime) == (2, 2000, 600)


def test_a_real_pilot_refused_a_job_it_cannot_hold_goes_on_and_another_pilot_runs_it(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # Given local's pilots of 2000 MB, one fat job (1500 MB) and light ones, and a first
    # pilot that was submitted with 1000 MB (before the site admin raised local's memory)
    tower = live_tower(site={**LOCAL, "limits": {"max_queued": 1, "max_running": 2,
                                                 "max_per_cycle": 1}})
    tower.submit(toy_production(tmp_path, "fat", jobs=1, memory=1500))
    tower.submit(toy_production(tmp_path, "light", jobs=4, sleep=0.002))
    matchmaker.run_once(tower.runtime)
    assert factory.run_once(tower.runtime) == 1
    with transaction(tower.runtime.engine) as session:
        [old] = session.exec(select(Pilot)).all()
        session.execute(update(Pilot).where(col(Pilot.id) == old.id).values(memory=1000))

    def refused() -> bool:
        with Session(tower.runtime.engine) as session:
            return bool(session.exec(select(JobEvent).where(
                col(JobEvent.reason).startswith(f"refused by pilot {old.id}"))).first())

    # When it takes the fat job's message, it is refused that job alone
    tower.drive(refused, timeout=60, without=("factory",))
    # Then it goes on with the light ones, and a pilot that can hold the fat job runs it
    tower.drive(tower.all_ended, timeout=90)
    assert_done_exactly_once(tower.runtime.engine, jobs=5)
    with Session(tower.runtime.engine) as session:
        fat = session.exec(select(Attempt).join(Job, col(Job.id) == Attempt.job_id).join(
            Production, col(Production.id) == Job.production_id).where(
            Production.name == "fat")).all()
        ran_at_old = session.exec(select(Attempt).where(Attempt.pilot_id == old.id)).all()
    assert len(fat) == 1 and fat[0].pilot_id != old.id
    assert ran_at_old, "the refused pilot stopped instead of running the light jobs"

    # it ends only when idle, as a pilot does
    def old_ended() -> bool:
        with Session(tower.runtime.engine) as session:
            return session.get_one(Pilot, old.id).state == PilotState.DONE

    tower.drive(old_ended, timeout=60)
    with Session(tower.runtime.engine) as session:
        assert (session.get_one(Pilot, old.id).message or "").startswith("idle for")

