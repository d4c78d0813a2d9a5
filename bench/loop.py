"""The broker loop alone: jobs matched to a site, published to RabbitMQ with confirms and
recorded as queued, per second, on PostgreSQL.

    .venv/bin/python bench/loop.py [--jobs 100000] [--drain 20000] [--repeat 7] [--json]
                                   [--database URL --broker URL]

One production of --jobs jobs is submitted (`tower submit`); then, --repeat times, the
loop (`matchmaker.run_once`, as `tower run` cycles it) drains --drain of them into the
site's queue, timed, after which they are taken back to `defined` (through the state
table) and the queue purged, so every round starts alike. The site's backlog bound is
opened to the drain size by a registered pilot's slots, so only the loop's speed counts.
Reports each round's jobs/s: n, mean, median, min and max; and the loop process's own CPU
time per job (median of rounds), which a loaded machine disturbs less than the rate.

--database and --broker reuse an existing tower database (submitted once, by the first
run) and RabbitMQ vhost: before/after comparisons run interleaved on the same data.
Needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import postgres, vhost  # noqa: E402
from bench.scale import NAME, PILOT_SHAPE  # noqa: E402
from bench.submit import tower_submit  # noqa: E402
from tests.conftest import write_home  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.loops import matchmaker  # noqa: E402
from tower.model.db import transaction  # noqa: E402
from tower.model.models import Job, Pilot  # noqa: E402
from tower.model.states import JobState, PilotState, move_jobs  # noqa: E402
from tower.runtime import Runtime  # noqa: E402

QUEUE = "local.default"
PILOT = "bench-loop"


def round_of(runtime: Runtime, count: int, timeout: float = 300) -> dict[str, float]:
    """Cycle the loop until `count` jobs are queued: jobs per second."""
    queued, cycles = 0, 0
    started, cpu = time.perf_counter(), time.process_time()
    while queued < count and time.perf_counter() - started < timeout:
        queued += matchmaker.run_once(runtime)
        cycles += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    depth = runtime.broker.depth(QUEUE)
    if depth is None or depth < queued:
        raise RuntimeError(f"{queued} jobs queued but the broker holds {depth}")
    return {"queued": queued, "seconds": seconds, "rate": queued / seconds, "cycles": cycles,
            "cpu_us": 1e6 * cpu / queued}


def take_back(runtime: Runtime, broker: str) -> None:
    """Every job at the site back to `defined`, and its queue emptied."""
    with transaction(runtime.engine) as session:
        ids = list(session.scalars(select(Job.id).where(
            Job.state.in_([JobState.QUEUED, JobState.ASSIGNED]))))  # type: ignore[attr-defined]
        move_jobs(session, ids, [JobState.QUEUED, JobState.ASSIGNED], JobState.DEFINED,
                  "bench: taken back", site=None)
    with pika.BlockingConnection(pika.URLParameters(broker)) as connection:
        connection.channel().queue_purge(QUEUE)


def prepared(runtime: Runtime, drained: int) -> None:
    """A running pilot whose slots open the backlog bound to the drain size."""
    slots = int(drained / runtime.config.sites["local"].backlog.per_slot) + 1
    with transaction(runtime.engine) as session:
        pilot = session.get(Pilot, PILOT)
        if pilot is None:
            session.add(Pilot(id=PILOT, site="local", state=PilotState.RUNNING, slots=slots))
        else:
            pilot.slots = slots
    runtime.broker.depth(QUEUE)  # declares the queue


def run(jobs: int, drained: int, repeat: int, directory: Path,
        database: str, broker: str, batch: int) -> dict[str, Any]:
    config = write_home(directory, database, broker=broker,
                        site={"backlog": {"per_slot": 2, "max": drained},
                              "pilot": PILOT_SHAPE},
                        loops={"batch_size": batch})
    runtime = Runtime.open(load_config(config))
    try:
        with transaction(runtime.engine) as session:
            fresh = session.scalar(select(Job.id).limit(1)) is None
        if fresh:
            tower_submit(config, NAME, jobs, directory)
        prepared(runtime, drained)
        take_back(runtime, broker)
        rounds = []
        for _ in range(repeat):
            rounds.append(round_of(runtime, drained))
            take_back(runtime, broker)
    finally:
        runtime.close()
    rates = [each["rate"] for each in rounds]
    return {"jobs": jobs, "drain": drained, "batch_size": batch, "n": len(rates),
            "mean": statistics.fmean(rates), "median": statistics.median(rates),
            "min": min(rates), "max": max(rates),
            "stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "cycles": statistics.median(each["cycles"] for each in rounds), "rates": rates,
            "cpu_us": statistics.median(each["cpu_us"] for each in rounds)}


@contextlib.contextmanager
def services(database: str | None, broker: str | None) -> Iterator[tuple[str, str]]:
    """The given database and vhost, or fresh ones removed afterwards."""
    with contextlib.ExitStack() as stack:
        yield (database or stack.enter_context(postgres()),
               broker or stack.enter_context(vhost()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=20_000, help="jobs queued per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds")
    parser.add_argument("--batch", type=int, default=5000, help="loops.batch_size")
    parser.add_argument("--database", help="an existing tower database to reuse")
    parser.add_argument("--broker", help="an existing RabbitMQ vhost URL to reuse")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, services(args.database,
                                                             args.broker) as (database, broker):
        result = run(args.jobs, args.drain, args.repeat, Path(scratch), database, broker,
                     args.batch)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"broker loop, {result['drain']:,} jobs a round of {result['jobs']:,} "
          f"(batch {result['batch_size']}), n={result['n']}: mean {result['mean']:,.0f} "
          f"median {result['median']:,.0f} jobs/s (min {result['min']:,.0f}, max "
          f"{result['max']:,.0f}, {result['cycles']:.0f} cycles a round); the loop's own CPU "
          f"{result['cpu_us']:.0f} us a job (median)")


if __name__ == "__main__":
    main()
