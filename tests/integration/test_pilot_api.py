"""The pilot's API through Flask's test client on a real database: claims and reports are
idempotent, stale and late ones are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import Session, select

from catalog.timeutil import ago
from tests.conftest import write_home
from tests.integration.conftest import toy_production
from tower.config import load_config
from tower.loops import matchmaker, monitor
from tower.management import productions
from tower.model.db import transaction
from tower.model.models import Attempt, Job, Pilot
from tower.model.states import JobState
from tower.runtime import Runtime
from web.app import create_app


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    home = write_home(tmp_path / "home", database_url, {"backlog": {"min": 10}})
    runtime = Runtime.open(load_config(home))
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, toy_production(tmp_path, jobs=3),
                                     runtime.config):
            productions.create(session, item)
        session.add(Pilot(id="p1", site="local"))
        session.add(Pilot(id="p2", site="local"))
    matchmaker.run_once(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def client(runtime: Runtime) -> FlaskClient:
    client = create_app(runtime).test_client()
    for pilot in ("p1", "p2"):
        assert client.post(f"/api/v1/pilots/{pilot}/register", json={}).status_code == 200
    return client


def post(client: FlaskClient, pilot: str, action: str, body: dict[str, Any]) -> Any:
    response = client.post(f"/api/v1/pilots/{pilot}/{action}", json=body)
    assert response.status_code == 200, response.json
    return response.json


def finished(job: int, attempt: int) -> dict[str, Any]:
    return {"job": job, "attempt": attempt, "ending": "finished", "exit_code": 1}


def test_a_message_is_claimed_once(client: FlaskClient, runtime: Runtime) -> None:
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    key = [message["job"], message["attempt"]]
    answer = post(client, "p1", "claim", {"jobs": [key]})
    [first] = answer["jobs"]
    assert first["granted"] and first["variables"]["seed"]
    assert answer["productions"][first["production"]]["steering"]
    # the same message redelivered, to this pilot or another
    # the same message redelivered to another pilot: refused
    [other] = post(client, "p2", "claim", {"jobs": [key]})["jobs"]
    assert not other["granted"] and "running" in other["reason"]
    # the same claim again from its pilot (a retry after a lost answer): granted again,
    # with the same work, so the pilot loses nothing (it runs each job once by its key)
    [again] = post(client, "p1", "claim", {"jobs": [key]})["jobs"]
    assert again["granted"] and again["variables"] == first["variables"]
    with Session(runtime.engine) as session:
        assert len(session.exec(select(Attempt).where(Attempt.job_id == key[0])).all()) == 1


def test_a_claim_carries_its_productions_templates_once_and_each_job_its_own_values(
        client: FlaskClient) -> None:
    messages = post(client, "p1", "lease", {"queue": "local.default", "max": 3})["messages"]
    answer = post(client, "p1", "claim",
                  {"jobs": [[m["job"], m["attempt"]] for m in messages]})
    assert [claim["granted"] for claim in answer["jobs"]] == [True, True, True]
    [(name, shared)] = answer["productions"].items()
    assert shared["command"] and shared["steering"] and "outputs" in shared
    assert {claim["production"] for claim in answer["jobs"]} == {name}
    assert not any("command" in claim or "steering" in claim for claim in answer["jobs"])
    assert len({claim["variables"]["seed"] for claim in answer["jobs"]}) == 3


def test_a_stale_attempt_is_refused(client: FlaskClient) -> None:
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    [answer] = post(client, "p1", "claim",
                    {"jobs": [[message["job"], message["attempt"] - 1]]})["jobs"]
    assert not answer["granted"] and answer["reason"].startswith("stale")


def test_a_cancelled_job_is_refused(client: FlaskClient, runtime: Runtime) -> None:
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    with transaction(runtime.engine) as session:
        from tower.model.states import move_jobs_from
        move_jobs_from(session, [message["job"]], JobState.CANCELLED, "test")
    [answer] = post(client, "p1", "claim", {"jobs": [[message["job"], message["attempt"]]]})["jobs"]
    assert not answer["granted"] and answer["reason"] == "the job is cancelled"


def test_a_repeated_report_changes_nothing(client: FlaskClient, runtime: Runtime) -> None:
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    key = (message["job"], message["attempt"])
    post(client, "p1", "claim", {"jobs": [list(key)]})
    [first] = post(client, "p1", "report", {"reports": [finished(*key)]})["verdicts"]
    [second] = post(client, "p1", "report", {"reports": [finished(*key)]})["verdicts"]
    assert first["accepted"] and first["reason"] == "exit_code"
    assert not second["accepted"]
    with Session(runtime.engine) as session:
        assert len(session.exec(select(Attempt)).all()) == 1
        assert session.get(Job, key[0]).state is JobState.DEFINED  # type: ignore[union-attr]


def test_a_late_report_from_a_lost_attempt_is_refused(client: FlaskClient,
                                                      runtime: Runtime) -> None:
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    key = (message["job"], message["attempt"])
    post(client, "p1", "claim", {"jobs": [list(key)]})
    with transaction(runtime.engine) as session:
        attempt = session.exec(select(Attempt)).one()
        attempt.heartbeat_at = ago(3600)
        session.add(attempt)
    assert monitor.run_once(runtime)["attempts_lost"] == 1
    # the heartbeat now tells the pilot to stop it, and its report is refused
    assert post(client, "p1", "heartbeat", {"jobs": [list(key)]})["stop"] == [list(key)]
    [verdict] = post(client, "p1", "report", {"reports": [finished(*key)]})["verdicts"]
    assert not verdict["accepted"]
    with Session(runtime.engine) as session:
        job = session.get(Job, key[0])
        assert job is not None and job.state is JobState.DEFINED
        assert session.exec(select(Attempt)).one().outcome == "lost_heartbeat"


def test_bad_bodies_get_json_errors_naming_the_field(client: FlaskClient) -> None:
    response = client.post("/api/v1/pilots/p1/claim", json={"jobs": "all"})
    assert response.status_code == 400
    assert response.json["field"] == "jobs"
    response = client.post("/api/v1/pilots/p1/report", json={"reports": [
        {"job": 1, "attempt": 1, "ending": "exploded"}]})
    assert response.status_code == 400 and response.json["field"] == "reports.0.ending"
    response = client.post("/api/v1/pilots/nobody/claim", json={"jobs": []})
    assert response.status_code == 404


def test_a_pilot_may_only_lease_its_own_sites_queues(client: FlaskClient) -> None:
    response = client.post("/api/v1/pilots/p1/lease", json={"queue": "other.default", "max": 1})
    assert response.status_code == 400 and response.json["field"] == "queue"


def test_a_lease_expires_and_the_message_returns(client: FlaskClient, runtime: Runtime) -> None:
    from tower.model.models import QueueMessage

    taken = post(client, "p1", "lease", {"queue": "local.default", "max": 10})["messages"]
    assert len(taken) == 3
    assert post(client, "p2", "lease", {"queue": "local.default", "max": 10})["messages"] == []
    with transaction(runtime.engine) as session:
        message = session.get(QueueMessage, taken[0]["id"])
        assert message is not None
        message.leased_until = ago(1)
        session.add(message)
    again = post(client, "p2", "lease", {"queue": "local.default", "max": 10})["messages"]
    assert [m["id"] for m in again] == [taken[0]["id"]]


def test_released_messages_return_and_acked_ones_are_gone(client: FlaskClient,
                                                          runtime: Runtime) -> None:
    taken = post(client, "p1", "lease", {"queue": "local.default", "max": 2})["messages"]
    post(client, "p1", "release", {"ids": [taken[0]["id"]]})
    # acks ride on the next lease call
    again = post(client, "p2", "lease", {"queue": "local.default", "max": 10,
                                         "ack": [taken[1]["id"]]})["messages"]
    assert taken[0]["id"] in [m["id"] for m in again]
    from tower.model.models import QueueMessage

    def stored() -> list[int | None]:
        with Session(runtime.engine) as session:
            return [m.id for m in session.exec(select(QueueMessage)).all()]

    # p2 cannot ack p1's message; p1 can
    assert taken[1]["id"] in stored()
    post(client, "p1", "lease", {"queue": "local.default", "max": 0, "ack": [taken[1]["id"]]})
    assert taken[1]["id"] not in stored()


def test_productions_are_readable_over_the_api(client: FlaskClient) -> None:
    [production] = client.get("/api/v1/productions").json["productions"]
    assert production["name"] == "toy" and production["jobs"] == 3
    assert client.get("/api/v1/productions/toy").json["states"] == {"queued": 3}
    missing = client.get("/api/v1/productions/nope")
    assert missing.status_code == 404 and missing.json["field"] == "production"


def test_a_claim_carries_the_reports_of_what_ended(client: FlaskClient,
                                                    runtime: Runtime) -> None:
    # Given one job running at p1 and two more waiting for it
    first, *rest = post(client, "p1", "lease", {"queue": "local.default", "max": 3})["messages"]
    key = (first["job"], first["attempt"])
    post(client, "p1", "claim", {"jobs": [list(key)]})
    # When p1 reports the first and claims the others in one call
    answer = post(client, "p1", "claim", {"jobs": [[m["job"], m["attempt"]] for m in rest],
                                          "reports": [finished(*key)]})
    # Then the first ended as reported and the others run, all in that one transaction
    [verdict] = answer["verdicts"]
    assert verdict["accepted"] and verdict["reason"] == "exit_code"
    assert [claim["granted"] for claim in answer["jobs"]] == [True, True]
    with Session(runtime.engine) as session:
        attempt = session.exec(select(Attempt).where(Attempt.job_id == key[0])).one()
        assert attempt.outcome == "exit_code" and attempt.exit_code == 1
        assert {session.get(Job, m["job"]).state for m in rest} == {  # type: ignore[union-attr]
            JobState.RUNNING}
    # and a claim that reports an attempt twice is refused the second time, changing nothing
    again = post(client, "p1", "claim", {"jobs": [], "reports": [finished(*key)]})
    assert again["verdicts"][0]["accepted"] is False and again["jobs"] == []


def test_a_job_on_attempt_0_is_claimed_and_its_failure_decided(client: FlaskClient,
                                                                runtime: Runtime) -> None:
    # Given a job queued on attempt 0, as a release before migrations left some (its
    # message carries attempt 0; no attempt row counts above its budget mark, 0)
    [message] = post(client, "p1", "lease", {"queue": "local.default", "max": 1})["messages"]
    with transaction(runtime.engine) as session:
        job = session.get(Job, message["job"])
        assert job is not None
        job.attempt = 0
        session.add(job)
    key = (message["job"], 0)
    # When a pilot claims it, and reports it failed with its next claim
    [granted] = post(client, "p1", "claim", {"jobs": [list(key)]})["jobs"]
    assert granted["granted"] and granted["attempt"] == 0
    answer = post(client, "p1", "claim", {"jobs": [], "reports": [finished(*key)]})
    # Then the policy decides on that attempt (a retry), not a 500
    [verdict] = answer["verdicts"]
    assert verdict["accepted"] and verdict["reason"] == "exit_code"
    with Session(runtime.engine) as session:
        job = session.get(Job, key[0])
        assert job is not None and job.state is JobState.DEFINED
        assert job.message and "exit code 1" in job.message and "retry" in job.message
    # and the matchmaker gives the retry attempt 1
    matchmaker.run_once(runtime)
    with Session(runtime.engine) as session:
        job = session.get(Job, key[0])
        assert job is not None and job.attempt == 1
