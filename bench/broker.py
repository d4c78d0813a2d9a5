"""The broker path: confirmed publication rates, and trivial jobs end to end through pilots.

    .venv/bin/python bench/broker.py [--messages 20000] [--jobs 1000] [--repeat 3]

1. Publication: the tower's RabbitMQ broker (confirms pipelined over batches of
   2,000, as the matchmaker publishes) against pika's own confirm-per-message
   publishing and the database queue on SQLite and PostgreSQL.
2. End to end: `tower run --until-done` on PostgreSQL with two local pilots of
   eight slots, each job running `true`, through RabbitMQ and through the
   database queue.

Needs RabbitMQ on 127.0.0.1:5672 (guest) with rabbitmqctl, and PostgreSQL on
127.0.0.1:5432 (postgres:postgres), as `make test` starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_home  # noqa: E402
from tower.brokers.broker import Message  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.runtime import Runtime  # noqa: E402

ADMIN = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
BATCH = 2000


@contextmanager
def vhost() -> Iterator[str]:
    name = f"gt-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*",
                    ".*"], check=True)
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=True)


@contextmanager
def postgres() -> Iterator[str]:
    name = f"gt_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def messages(count: int) -> list[Message]:
    return [Message(job=i, attempt=1, walltime=60) for i in range(count)]


def tower_publish(database: str, broker: str, count: int, directory: Path) -> float:
    """Seconds for the tower's broker to publish `count` messages, confirmed, in batches."""
    runtime = Runtime.open(load_config(write_home(directory, database, broker=broker)))
    batch = messages(BATCH)
    runtime.broker.publish("bench.warmup", batch[:10])
    started = time.perf_counter()
    for _ in range(count // BATCH):
        runtime.broker.publish("bench.q", batch)
    elapsed = time.perf_counter() - started
    runtime.close()
    return elapsed


def pika_per_message(url: str, count: int) -> float:
    """Seconds for pika's BlockingChannel to publish `count`, waiting for each confirm."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("bench.pika", durable=True)
        body = json.dumps(messages(1)[0]).encode()
        properties = pika.BasicProperties(delivery_mode=2)
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish("", "bench.pika", body, properties, mandatory=True)
        return time.perf_counter() - started


def end_to_end(database: str, broker: str, jobs: int, directory: Path) -> float:
    """Seconds of `tower run --until-done` for `jobs` jobs running `true`."""
    config = write_home(
        directory, database,
        site={"pilot": {"slots": 8, "walltime": "1h", "idle_timeout": 10},
              "limits": {"max_queued": 2, "max_running": 2, "max_per_cycle": 2},
              "backlog": {"per_slot": 4}},
        broker=broker, loops={"interval": 1},
        monitor={"heartbeat_interval": 10, "heartbeat_timeout": 60})
    request = directory / "trivial.yaml"
    request.write_text(yaml.safe_dump({
        "name": "trivial", "software": "coreutils", "command": ["true"],
        "events_total": jobs, "events_per_job": 1, "walltime": "1m"}))
    env = {**os.environ, "TOWER_CONFIG": str(config)}
    tower = [sys.executable, "-m", "tower.cli"]
    subprocess.run([*tower, "submit", str(request)], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run([*tower, "run", "--until-done", "--timeout", "900"], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def report(label: str, count: int, unit: str, times: list[float]) -> None:
    median = statistics.median(times)
    print(f"{label:<44} median {median:7.2f}s ({min(times):.2f}-{max(times):.2f})  "
          f"{count / median:9.0f} {unit}/s", flush=True)


def repeated(repeat: int, run: Callable[[Path], float]) -> list[float]:
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            times.append(run(Path(scratch)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    count = args.messages // BATCH * BATCH

    print(f"publication of {count} confirmed messages")
    with vhost() as url, postgres() as database:
        report("rabbitmq, tower (pipelined confirms)", count, "messages", repeated(
            args.repeat, lambda d: tower_publish(f"sqlite:///{d / 'x.db'}", url, count, d)))
        per_message = min(count, 5000)
        report(f"rabbitmq, pika confirm per message ({per_message})", per_message, "messages",
               [pika_per_message(url, per_message) for _ in range(args.repeat)])
        report("database queue, SQLite", count, "messages", repeated(
            args.repeat, lambda d: tower_publish(f"sqlite:///{d / 'x.db'}", "database", count,
                                                 d)))
        report("database queue, PostgreSQL", count, "messages", repeated(
            args.repeat, lambda d: tower_publish(database, "database", count, d)))

    print(f"\n{args.jobs} jobs running `true`, PostgreSQL, 2 local pilots x 8 slots")
    for name in ("rabbitmq", "database"):
        times = []
        for _ in range(args.repeat):
            with postgres() as database, tempfile.TemporaryDirectory() as scratch:
                if name == "rabbitmq":
                    with vhost() as url:
                        times.append(end_to_end(database, url, args.jobs, Path(scratch)))
                else:
                    times.append(end_to_end(database, "database", args.jobs, Path(scratch)))
        report(f"end to end, {name} broker", args.jobs, "jobs", times)


if __name__ == "__main__":
    main()
