"""The broker loop's publication in pieces through the real RabbitMQ: each piece recorded as
queued only once confirmed, in order, and never over a job another process moved meanwhile."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pika
import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from tests.integration.conftest import LiveTower, toy_production
from tower.brokers.broker import Broker, Message
from tower.errors import BackendError
from tower.loops import matchmaker
from tower.model.db import transaction
from tower.model.models import Job
from tower.model.states import JobState, move_jobs

pytestmark = [pytest.mark.rabbitmq, pytest.mark.one_database]

JOBS = 10
QUEUE = "local.default"


def nothing(piece: int, messages: list[Message]) -> None:
    pass


class Hooked:
    """The tower's own broker, with `before(piece number, messages)` run before each
    publication (another process acting meanwhile) and `after` once it is confirmed."""

    def __init__(self, broker: Broker, before: Callable[[int, list[Message]], None] = nothing,
                 after: Callable[[int, list[Message]], None] = nothing) -> None:
        self.broker, self.before, self.after, self.pieces = broker, before, after, 0

    def publish(self, queue: str, messages: list[Message]) -> None:
        self.pieces += 1
        self.before(self.pieces, messages)
        self.broker.publish(queue, messages)
        self.after(self.pieces, messages)

    def __getattr__(self, name: str) -> object:
        return getattr(self.broker, name)


@pytest.fixture
def tower(amqp_url: str, live_tower: Callable[..., LiveTower], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> LiveTower:
    # pieces of three: ten jobs go out in four pieces
    monkeypatch.setattr(matchmaker, "PIECE", 3)
    made = live_tower(broker=amqp_url, site={"backlog": {"min": JOBS}})
    made.submit(toy_production(tmp_path, jobs=JOBS))
    return made


def states(tower: LiveTower) -> dict[int, tuple[JobState, int]]:
    with Session(tower.runtime.engine) as session:
        return {job.id or 0: (job.state, job.attempt) for job in session.exec(select(Job))}


def waiting(url: str) -> list[tuple[int, int]]:
    """(job, attempt) of the messages in the site's queue, in their order (left there)."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        found = []
        while True:
            method, _, body = channel.basic_get(QUEUE, auto_ack=False)
            if method is None:
                return found
            message = json.loads(body)
            found.append((message["job"], message["attempt"]))


def test_pieces_are_queued_in_order_each_once_confirmed(tower: LiveTower, amqp_url: str) -> None:
    recorded: list[list[int]] = []

    def look(_: int, messages: list[Message]) -> None:
        # confirmed, and not yet recorded: still assigned
        with Session(tower.runtime.engine) as session:
            recorded.append(list(session.exec(select(Job.state).where(
                col(Job.id).in_([message["job"] for message in messages])))))

    hooked = Hooked(tower.runtime.broker, after=look)
    tower.runtime.broker = hooked
    assert matchmaker.run_once(tower.runtime) == JOBS
    assert hooked.pieces == 4
    assert all(state == JobState.ASSIGNED for piece in recorded for state in piece)
    assert set(states(tower).values()) == {(JobState.QUEUED, 1)}
    # in the order they were chosen: by priority, then id
    assert waiting(amqp_url) == [(job, 1) for job in sorted(states(tower))]


def test_a_job_moved_while_its_piece_was_out_is_left_where_it_went(tower: LiveTower) -> None:
    moved: dict[int, JobState] = {}

    def meanwhile(piece: int, messages: list[Message]) -> None:
        # another process: a pilot claimed one (a copy from before), a manager cancelled one
        if piece == 2:
            first, second = messages[0]["job"], messages[1]["job"]
            with transaction(tower.runtime.engine) as session:
                move_jobs(session, [first], JobState.ASSIGNED, JobState.RUNNING, "claimed")
                move_jobs(session, [second], JobState.ASSIGNED, JobState.CANCELLED, "cancel")
            moved.update({first: JobState.RUNNING, second: JobState.CANCELLED})

    tower.runtime.broker = Hooked(tower.runtime.broker, before=meanwhile)
    assert matchmaker.run_once(tower.runtime) == JOBS - 2
    found = states(tower)
    assert {job: found[job][0] for job in moved} == moved
    assert sum(state == JobState.QUEUED for state, _ in found.values()) == JOBS - 2


def test_a_piece_confirmed_but_not_recorded_goes_out_again_in_the_same_attempt(
        tower: LiveTower, amqp_url: str) -> None:
    # the broker confirmed piece two, then the tower lost it (as if killed before the
    # record): its jobs stay assigned, the other pieces are queued
    def lost(piece: int, _: list[Message]) -> None:
        if piece == 2:
            raise BackendError("lost after the confirm")

    tower.runtime.broker = Hooked(tower.runtime.broker, after=lost)
    assert matchmaker.run_once(tower.runtime) == JOBS - 3
    stranded = {job for job, (state, _) in states(tower).items() if state == JobState.ASSIGNED}
    assert len(stranded) == 3

    # republished once stranded, in the same attempt: two copies of one (job, attempt),
    # of which the claim takes one and refuses the other (test_rabbitmq's duplicate test)
    with transaction(tower.runtime.engine) as session:
        session.execute(update(Job).where(col(Job.id).in_(stranded)).values(
            updated_at=Job.updated_at - timedelta(minutes=2)))
    tower.runtime.broker = tower.runtime.broker.broker  # type: ignore[attr-defined]
    matchmaker.run_once(tower.runtime)
    assert set(states(tower).values()) == {(JobState.QUEUED, 1)}
    messages = waiting(amqp_url)
    assert sorted(messages) == sorted([(job, 1) for job in states(tower)]
                                      + [(job, 1) for job in stranded])
