"""The swarm benchmark's simulated pilots (bench/swarm.py) against a live tower on PostgreSQL
and RabbitMQ over HTTPS, the swarm as its trusted proxy: a small swarm finishes every job
exactly once, and its pilots meet the same claim fencing as real ones (a report of a job
the pilot does not hold, or of a stale attempt, is refused and changes nothing; a pilot
may act only as itself)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest

from bench import swarm
from tests.conftest import postgres_database

JOBS = 300
PILOTS = 20


@pytest.fixture
def tower(tmp_path: Path, amqp_url: str) -> Iterator[swarm.Tower]:
    with postgres_database("swarm") as database:
        started = swarm.Tower(tmp_path, database, amqp_url, JOBS)
        try:
            started.start()
            yield started
        finally:
            started.stop()


def call(tower: swarm.Tower, pilot: str, action: str, body: dict[str, Any],
         as_pilot: str | None = None) -> tuple[int, Any]:
    """One call through the swarm's own client, as `as_pilot` (default: the pilot itself)."""
    async def once() -> tuple[int, Any]:
        http = swarm.Http(tower.urls, str(tower.ca_file), 1)
        return await http.post(pilot, action, body,
                               dn=swarm.pilot_dn(as_pilot) if as_pilot else None)
    return asyncio.run(once())


def rows(database: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as connection:
        return connection.execute(query, params).fetchall()


def snapshot(database: str) -> list[list[tuple[Any, ...]]]:
    """Every job's state, every attempt's end, and the events: what fencing must not touch."""
    return [rows(database, "select id, state, attempt from job order by id"),
            rows(database, "select job_id, number, pilot_id, outcome, ended_at from attempt "
                           "order by job_id, number"),
            rows(database, "select count(*) from jobevent")]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.5)


def refused(tower: swarm.Tower, pilot: str, job: int, attempt: int,
            as_pilot: str | None = None) -> dict[str, Any]:
    status, answer = call(tower, pilot, "report",
                          {"reports": [swarm.finished(job, attempt)]}, as_pilot)
    assert status == 200, answer
    [verdict] = answer["verdicts"]
    assert not verdict["accepted"], verdict
    return verdict  # type: ignore[no-any-return]


def test_a_small_swarm_runs_every_job_once_and_is_fenced_like_real_pilots(
        tower: swarm.Tower) -> None:
    database = tower.database
    workers = swarm.Workers(1, tower, payload_seconds=0.0)
    try:
        _, registered = workers.grow(tower, PILOTS, timeout=120)
        assert registered == PILOTS
        wait_for(lambda: swarm.job_counts(database) == {"done": JOBS}, 300,
                 f"{JOBS} jobs done by the swarm")
        [stats] = workers.stats()
    finally:
        workers.stop()

    # every job once: one attempt each, successful, one `done` event each; granted once
    assert rows(database, "select count(*), count(distinct job_id), "
                          "count(*) filter (where outcome = 'success') from attempt") == \
        [(JOBS, JOBS, JOBS)]
    assert rows(database, "select job_id from jobevent where to_state = 'done' "
                          "group by job_id having count(*) <> 1") == []
    assert stats["granted"] == JOBS
    holders = dict(rows(database, "select job_id, pilot_id from attempt"))
    assert len(set(holders.values())) > 1, "the jobs were spread over the simulated pilots"

    # a job held by one simulated pilot: its message taken from the site queue, claimed
    tower.submit("one", 1)
    [(job,)] = rows(database, "select j.id from job j join production p "
                              "on p.id = j.production_id where p.name = 'one'")
    holder, other = swarm.pilot_ids(0, 0, 2)
    message = take_message(tower.broker, job)
    status, answer = call(tower, holder, "claim", {"jobs": [[job, message["attempt"]]],
                                                   "reports": []})
    assert status == 200 and answer["jobs"][0]["granted"], answer
    attempt = message["attempt"]
    before = snapshot(database)

    assert "no running attempt of this pilot" in refused(tower, other, job, attempt)["reason"]
    refused(tower, holder, job, attempt + 1)                       # a stale attempt number
    finished_jobs = [job_id for job_id, pilot in holders.items() if pilot == holder]
    refused(tower, holder, finished_jobs[0], 1)                    # reported already
    status, answer = call(tower, other, "claim", {"jobs": [[job, attempt]], "reports": []})
    assert status == 200 and not answer["jobs"][0]["granted"], answer
    # the identity the proxy names is the one that counts: not the pilot in the URL
    status, answer = call(tower, holder, "report", {"reports": [swarm.finished(job, attempt)]},
                          as_pilot=other)
    assert status == 403, answer
    status, answer = call(tower, holder, "heartbeat", {"jobs": [[job, attempt]]},
                          as_pilot=other)
    assert status == 403, answer
    assert snapshot(database) == before

    # and the holder's own report ends it
    status, answer = call(tower, holder, "report", {"reports": [swarm.finished(job, attempt)]})
    assert status == 200 and answer["verdicts"][0]["accepted"], answer
    assert rows(database, "select state from job where id = %s", job) == [("done",)]


def take_message(broker: str, job: int, timeout: float = 120) -> dict[str, Any]:
    """Take `job`'s message from the site queue, once the matchmaker published it."""
    deadline = time.monotonic() + timeout
    with pika.BlockingConnection(pika.URLParameters(broker)) as connection:
        channel = connection.channel()
        while time.monotonic() < deadline:
            method, _, body = channel.basic_get(swarm.queue_name(swarm.SITE, "default"))
            if method is None:
                time.sleep(0.2)
                continue
            channel.basic_ack(method.delivery_tag)
            message: dict[str, Any] = json.loads(body)
            if message["job"] == job:
                return message
    pytest.fail(f"no message for job {job} within {timeout:.0f}s")
