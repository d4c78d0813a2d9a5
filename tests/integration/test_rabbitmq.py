"""Productions through the real RabbitMQ at 127.0.0.1:5672, each test on a vhost of its own:
nothing lost and nothing run twice, through broker restarts, a killed tower and duplicates."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlmodel import Session, col, select

from tests.cluster import free_port
from tests.conftest import RABBITMQ, missing_service, rabbitmqctl, write_home
from tests.integration.conftest import LiveTower, assert_done_exactly_once, toy_production
from tower.brokers.broker import Message
from tower.config import load_config
from tower.errors import BackendError
from tower.loops import daemon, matchmaker
from tower.model.db import make_engine
from tower.model.models import Attempt, Job, JobEvent, Pilot
from tower.model.states import JobState

pytestmark = [pytest.mark.rabbitmq, pytest.mark.one_database]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_whole_production_runs_through_rabbitmq_once(amqp_url: str,
                                                       live_tower: Callable[..., LiveTower],
                                                       tmp_path: Path, queue_type: str) -> None:
    tower = live_tower(broker=amqp_url, broker_options={"queue_type": queue_type})
    tower.submit(toy_production(tmp_path, jobs=8))
    tower.drive(tower.all_ended, timeout=120)

    assert_done_exactly_once(tower.runtime.engine, jobs=8)
    vhost = amqp_url.rsplit("/", 1)[1]
    queues = dict(line.split("\t") for line in rabbitmqctl(
        "list_queues", "-p", vhost, "--no-table-headers", "name", "type").splitlines())
    assert queues == {"local.default": queue_type}
    assert tower.runtime.broker.depth("local.default") == 0
    with Session(tower.runtime.engine) as session:
        pilots = session.exec(select(Pilot)).all()
    password = amqp_url.split("@")[0].rsplit(":", 1)[1]
    logs = [Path(pilot.log_path or "").read_text() for pilot in pilots]
    assert any("started" in text for text in logs)
    assert not any(password in text for text in logs)


@pytest.mark.serial
def test_the_broker_restarted_mid_production(amqp_url: str,
                                             live_tower: Callable[..., LiveTower],
                                             tmp_path: Path) -> None:
    tower = live_tower(broker=amqp_url, loops={"interval": 0, "republish_after": 2})
    tower.submit(toy_production(tmp_path, jobs=12, events=40, sleep=0.02))
    tower.drive(lambda: tower.counts().get("done", 0) >= 2, timeout=120)

    rabbitmqctl("stop_app")
    try:
        # the tower keeps cycling against a broker that is gone; pilots lose theirs
        stopped = time.monotonic()
        while time.monotonic() - stopped < 4:
            daemon.run_cycle(tower.runtime)
            time.sleep(0.2)
        with pytest.raises(BackendError, match="broker"):
            tower.runtime.broker.depth("local.default")
    finally:
        rabbitmqctl("start_app")
    tower.drive(tower.all_ended, timeout=180)

    assert_done_exactly_once(tower.runtime.engine, jobs=12)


def test_a_message_published_twice_runs_once(amqp_url: str,
                                             live_tower: Callable[..., LiveTower],
                                             tmp_path: Path) -> None:
    # one pilot at a time, so the copy is read after the original was claimed
    tower = live_tower(broker=amqp_url,
                       site={"pilot": {"slots": 1, "walltime": "10m", "idle_timeout": 3},
                             "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1},
                             "backlog": {"min": 2}})
    tower.submit(toy_production(tmp_path, jobs=2))
    # published, with no pilot yet to take them: the matchmaker alone
    assert matchmaker.run_once(tower.runtime) == 2 and tower.counts() == {"queued": 2}
    with Session(tower.runtime.engine) as session:
        job = session.exec(select(Job).order_by(col(Job.id))).first()
    assert job is not None and job.id is not None
    tower.runtime.broker.publish("local.default", [
        Message(job=job.id, attempt=job.attempt, walltime=300)])

    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=2)
    with Session(tower.runtime.engine) as session:
        assert len(session.exec(select(Attempt).where(Attempt.job_id == job.id)).all()) == 1
    # the copy was read, refused by the tower, and acknowledged: nothing is left behind
    tower.drive(lambda: tower.runtime.broker.depth("local.default") == 0, timeout=30)

    def logs() -> str:
        with Session(tower.runtime.engine) as session:
            return "".join(Path(p.log_path or "").read_text()
                           for p in session.exec(select(Pilot)).all())

    # the pilot acknowledges the copy as soon as the tower refused it, and logs it after
    tower.drive(lambda: f"job={job.id} attempt={job.attempt} refused" in logs(), timeout=30)
    assert logs().count(f"job={job.id} attempt={job.attempt} started") == 1


def test_late_binding_keeps_each_sites_broker_queue_within_its_bound(
        amqp_url: str, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # one slot per site and a bound of three: jobs wait at each site, never more; the
    # broker's queue holds them but the one a busy pilot has at hand for its next slot
    bound = 3
    site = {"backlog": {"per_slot": 3, "min": 1, "max": bound},
            "pilot": {"slots": 1, "walltime": "10m", "idle_timeout": 3},
            "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}}
    tower = live_tower(broker=amqp_url, site=site, more_sites={"other": site})
    tower.submit(toy_production(tmp_path, jobs=16, events=40, sleep=0.01))
    samples: dict[str, list[int]] = {"local.default": [], "other.default": []}
    held: list[int] = []

    def sample_then_check() -> bool:
        for queue, seen in samples.items():
            seen.append(tower.runtime.broker.depth(queue) or 0)
        with Session(tower.runtime.engine) as session:
            held.extend(matchmaker.backlog(session).values())
        return tower.all_ended()

    tower.drive(sample_then_check, timeout=180, pause=0.05)
    assert_done_exactly_once(tower.runtime.engine, jobs=16)
    for queue, seen in samples.items():
        assert max(seen) <= bound, (queue, seen)
    # the bound was (nearly) reached, so the checks could have failed: a pilot claiming
    # ahead takes a job off the site's backlog as soon as it is there, so a sample at the
    # 0.05 s pace may never catch the third one waiting
    assert bound - 1 <= max(held) <= bound, held
    assert max(max(seen) for seen in samples.values()) >= bound - 1
    with Session(tower.runtime.engine) as session:
        sites = {a.site for a in session.exec(select(Attempt)).all()}
    assert sites == {"local", "other"}


def test_the_tower_killed_while_publishing_a_large_batch(tmp_path: Path, amqp_url: str,
                                                         postgres_url: str) -> None:
    jobs = 1000
    home = tmp_path / "home"
    # a fixed port: the pilots the first tower started find the second one there
    config = write_home(
        home, postgres_url,
        site={"pilot": {"slots": 8, "walltime": "10m", "idle_timeout": 5},
              "limits": {"max_queued": 2, "max_running": 2, "max_per_cycle": 2},
              "backlog": {"min": jobs}},
        broker=amqp_url, api={"bind": "127.0.0.1", "port": free_port()},
        loops={"interval": 1, "batch_size": jobs, "republish_after": 2})
    request = tmp_path / "trivial.yaml"
    request.write_text(yaml.safe_dump({
        "name": "trivial", "software": "coreutils", "command": ["true"],
        "events_total": jobs, "events_per_job": 1, "walltime": "1m", "outputs": []}))
    env = {**os.environ, "TOWER_CONFIG": str(config)}
    tower = [sys.executable, "-m", "tower.cli"]
    subprocess.run([*tower, "submit", str(request)], env=env, check=True, capture_output=True)

    engine = make_engine(load_config(config).database_url)
    first = subprocess.Popen([*tower, "run"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        with engine.connect() as connection:
            while connection.execute(text(
                    "select count(*) from job where state = 'assigned'")).scalar() == 0:
                assert time.monotonic() < deadline, "the batch was never matched"
                assert first.poll() is None, "the tower exited by itself"
                time.sleep(0.005)
                connection.commit()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with engine.connect() as connection:
        # the kill left the batch matched and not (all) recorded as queued
        assert connection.execute(text(
            "select count(*) from job where state = 'assigned'")).scalar() > 0

    second = subprocess.run([*tower, "run", "--until-done", "--timeout", "240"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert_done_exactly_once(engine, jobs=jobs, files_per_job=0)
    engine.dispose()


def test_a_pilot_that_loses_the_broker_drains_and_exits_cleanly(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower()
    with Session(tower.runtime.engine) as session:
        session.add(Pilot(id="lonely", site="local"))
        session.commit()
    # port 1 on loopback: nothing listens there, the connection is refused at once
    env = {**os.environ, "GRIDTOWER_BROKER_URL": "amqp://someone:hunter2@127.0.0.1:1/x"}
    result = subprocess.run(
        [sys.executable, "-m", "pilots.main", "--tower", tower.runtime.config.api_url,
         "--site", "local", "--pilot-id", "lonely", "--source", "amqp",
         "--scratch", str(tmp_path / "scratch"), "--storage", str(tmp_path / "storage"),
         "--patience", "2", "--idle-timeout", "60", "--poll", "0.2"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "unreachable for" in result.stderr and "hunter2" not in result.stderr
    with Session(tower.runtime.engine) as session:
        pilot = session.get(Pilot, "lonely")
        assert pilot is not None and pilot.state == "done"
        assert "broker" in (pilot.message or "")


def test_queued_jobs_whose_messages_vanished_are_published_again(
        amqp_url: str, live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    # no pilots at all: the messages wait in the broker
    tower = live_tower(broker=amqp_url, loops={"interval": 0, "republish_after": 1},
                       site={"limits": {"max_queued": 0, "max_running": 0, "max_per_cycle": 0},
                             "backlog": {"min": 4}})
    tower.submit(toy_production(tmp_path, jobs=4))
    tower.drive(lambda: tower.counts().get("queued", 0) == 4, timeout=30)
    depth = tower.runtime.broker.depth
    assert depth("local.default") == 4

    rabbitmqctl("purge_queue", "-p", amqp_url.rsplit("/", 1)[1], "local.default")
    assert depth("local.default") == 0
    tower.drive(lambda: depth("local.default") == 4, timeout=30)
    with Session(tower.runtime.engine) as session:
        again = session.exec(select(JobEvent).where(
            JobEvent.from_state == JobState.QUEUED, JobEvent.to_state == JobState.QUEUED)).all()
    assert len(again) == 4 and all("lost" in event.reason for event in again)
    assert tower.counts() == {"queued": 4}


#: The authority of the TLS listener `make test` sets up on 127.0.0.1:5671.
TLS_CA = Path(os.environ.get("GRIDTOWER_TEST_RABBITMQ_TLS_CA",
                             "/etc/rabbitmq/gridtower-tls/ca.pem"))


@pytest.fixture
def amqps_url(amqp_url: str) -> str:
    try:
        socket.create_connection(("127.0.0.1", 5671), timeout=3).close()
    except OSError:
        missing_service("RabbitMQ's TLS listener on 127.0.0.1:5671")
    if not TLS_CA.exists():
        missing_service(f"the TLS authority {TLS_CA}")
    return amqp_url.replace("amqp://", "amqps://").replace(f"@{RABBITMQ}/", "@127.0.0.1:5671/")


def test_a_production_runs_over_tls(amqps_url: str, live_tower: Callable[..., LiveTower],
                                    tmp_path: Path) -> None:
    tower = live_tower(broker=amqps_url, broker_options={"ca_file": str(TLS_CA)})
    tower.submit(toy_production(tmp_path, jobs=4))
    tower.drive(tower.all_ended, timeout=120)
    assert_done_exactly_once(tower.runtime.engine, jobs=4)


def test_a_broker_certificate_from_an_unknown_authority_is_refused(
        amqps_url: str, live_tower: Callable[..., LiveTower]) -> None:
    tower = live_tower(broker=amqps_url)  # the system's authorities do not know ours
    with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED"):
        tower.runtime.broker.depth("local.default")


def test_a_full_pilot_gives_the_messages_it_holds_back(amqp_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import pika

    from pilots import amqp
    from pilots.client import TowerClient

    # Given three jobs in a site queue and the source of a pilot with two slots
    monkeypatch.setattr(amqp, "HOLD", 0.5)
    monkeypatch.setenv(amqp.URL_VARIABLE, amqp_url)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare("hold.default", durable=True)
        for job in (1, 2, 3):
            channel.basic_publish("", "hold.default",
                                  f'{{"job": {job}, "attempt": 1, "walltime": 60}}'.encode())

    def ready() -> int:
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
            declared = connection.channel().queue_declare("hold.default", passive=True)
            return int(declared.method.message_count)

    source = amqp.AmqpSource(TowerClient("http://127.0.0.1:1", "p"), "hold.default", {}, 10)
    taken: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while len(taken) < 2 and time.monotonic() < deadline:
        taken += source.get(2 - len(taken))
        source.wait(0.1)
    assert [m["job"] for m in taken] == [1, 2]
    # When both are claimed and run, the third comes to the full pilot, which holds it
    source.ack(taken)
    deadline = time.monotonic() + 10
    while ready() and time.monotonic() < deadline:
        assert source.get(0) == []
        source.wait(0.1)
    assert ready() == 0
    # Then, the pilot still full past HOLD, the third goes back for another pilot
    deadline = time.monotonic() + 10
    while not ready() and time.monotonic() < deadline:
        assert source.get(0) == []
        source.wait(0.1)
    assert ready() == 1
    # and once a slot frees, the pilot takes it
    deadline = time.monotonic() + 10
    third: list[dict[str, object]] = []
    while not third and time.monotonic() < deadline:
        third = source.get(1)
        source.wait(0.1)
    assert [m["job"] for m in third] == [3]
    source.ack(third)
    source.close()


def test_a_claims_messages_are_acked_at_once_and_a_released_one_stays(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pika

    from pilots import amqp
    from pilots.client import TowerClient

    # Given four jobs in a site queue, taken by a pilot's source at once
    monkeypatch.setenv(amqp.URL_VARIABLE, amqp_url)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare("acks.default", durable=True)
        for job in (1, 2, 3, 4):
            channel.basic_publish("", "acks.default",
                                  f'{{"job": {job}, "attempt": 1, "walltime": 60}}'.encode())
    source = amqp.AmqpSource(TowerClient("http://127.0.0.1:1", "p"), "acks.default", {}, 10)
    taken: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while len(taken) < 3 and time.monotonic() < deadline:
        taken += source.get(3 - len(taken))
        source.wait(0.1)
    assert [m["job"] for m in taken] == [1, 2, 3]
    # When the pilot gives the first back (too long for its walltime) and acks the others
    source.release(taken[:1])
    source.ack(taken[1:])
    source.close()
    # Then the released one and the one never taken are in the queue, the acked ones gone
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        left = []
        while (got := channel.basic_get("acks.default", auto_ack=True))[0] is not None:
            left.append(int(got[2].split(b'"job": ')[1].split(b",")[0]))
    assert sorted(left) == [1, 4]
