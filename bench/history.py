"""Pages on a database that has held millions of jobs, most of them finished and pruned.

    .venv/bin/python bench/history.py [--jobs 10000000] [--productions 10] [--active 200000]
                                      [--events-per-job 5] [--repeat 20] [--json]

1. Fill, fast: --productions finished productions holding --jobs jobs in all. Each is
   filed as `tower submit` files it; its jobs are written `done` at site `local` by the
   submit's own streamed COPY (tower.model.db.insert_rows), with the history a run
   leaves: --events-per-job job events a job (assigned ... done) and the activity of its
   jobs done over one day, all 40 days ago, and its tally. Then one active production of
   --active jobs is submitted and moved through the state machine as the loops move jobs
   (bench/pages.py's shape: 30% done, 1% failed, some running and queued).
2. The pages and the API on loopback, each --repeat times: p50, p95, mean, n.
3. `tower db prune` with the default retention (30 days): its seconds and what it
   removed; VACUUM ANALYZE (autovacuum's work, done now); the same pages again.

Needs PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, update
from sqlmodel import Session, col, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import postgres  # noqa: E402
from bench.pages import shape, timings  # noqa: E402
from catalog.timeutil import utcnow  # noqa: E402
from tests.conftest import write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.cli import main as tower_main  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.management.specs import ProductionSpec, split  # noqa: E402
from tower.model import prune, tally  # noqa: E402
from tower.model.db import insert_rows, transaction  # noqa: E402
from tower.model.models import Activity, Job, JobEvent, JobTally, Production  # noqa: E402
from tower.model.states import JobState, ProductionState  # noqa: E402
from tower.runtime import Runtime  # noqa: E402
from web.server import start_server  # noqa: E402

#: The moves of a job that ran once and ended done, as its events record them.
PATH = [JobState.DEFINED, JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING,
        JobState.STAGING, JobState.DONE]
#: How long ago the finished productions ran (beyond the default retention of 30 days).
AGO = timedelta(days=40)


def finished_production(runtime: Runtime, name: str, jobs: int, moves: int,
                        directory: Path) -> None:
    """One production filed as a submit files it, its jobs written done with their
    history, AGO ago."""
    when = utcnow() - AGO
    with transaction(runtime.engine) as session:
        [item] = productions.plan(session, toy_production(directory, name=name, jobs=jobs,
                                                          events=10), runtime.config)
        production = productions.create(session, item, requested_by="bench")
        pid = production.id or 0
        spec = ProductionSpec.model_validate(production.spec)
        insert_rows(session, Job, productions.JOB_COLUMNS,
                    ((pid, job.index, job.seed, job.first_event, job.events)
                     for job in split(spec)),
                    {"state": JobState.DONE, "site": "local", "attempt": 1,
                     "priority": spec.priority, "queue": spec.queue, "created_at": when,
                     "updated_at": when})
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(
            Job.production_id == pid)).one()
        assert last - first + 1 == jobs, "job ids not consecutive"
        steps = list(zip(PATH[-moves - 1:-1], PATH[-moves:], strict=True))
        insert_rows(session, JobEvent, ["job_id", "from_state", "to_state"],
                    ((job_id, source, target) for job_id in range(first, last + 1)
                     for source, target in steps),
                    {"production_id": pid, "at": when, "reason": "bench"})
        buckets = range(tally.bucket_of(when) - 86400, tally.bucket_of(when), tally.BUCKET)
        share = jobs // len(buckets)
        insert_rows(session, Activity, ["bucket", "kind", "count", "events"],
                    ((bucket, kind, share, share * 10) for bucket in buckets
                     for kind in (tally.DONE, "success")),
                    {"production_id": pid, "site": "local", "code": 0})
        insert_rows(session, JobTally, ["production_id", "state", "jobs", "events"],
                    [(pid, JobState.DONE, jobs, jobs * 10)])
        session.execute(update(Production).where(col(Production.id) == pid).values(
            state=ProductionState.ACTIVE, full_run=True, updated_at=when))


def fill(runtime: Runtime, jobs: int, count: int, moves: int, active: int,
         directory: Path) -> dict[str, float]:
    spent: dict[str, float] = {}
    started = time.perf_counter()
    for number in range(count):
        finished_production(runtime, f"finished-{number}", jobs // count, moves, directory)
    spent["fill_finished_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, toy_production(directory, name="active",
                                                             jobs=active, events=10),
                                     runtime.config):
            productions.create(session, item)
    spent["fill_active_s"] = time.perf_counter() - started
    started = time.perf_counter()
    shape(runtime, active)
    spent["shape_active_s"] = time.perf_counter() - started
    return spent


def pages(runtime: Runtime, config: Path, repeat: int) -> dict[str, dict[str, float]]:
    server, base = start_server(runtime.config)
    server.bind(runtime)
    http = requests.Session()
    with Session(runtime.engine) as session:
        pruned_job = session.exec(select(func.min(Job.id))).one()

    def get(path: str) -> Any:
        def call() -> None:
            http.get(base + path, timeout=60).raise_for_status()
        return call

    def status() -> None:
        with open("/dev/null", "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                tower_main(["--config", str(config), "status", "--json"])
            finally:
                sys.stdout = stdout

    targets = {
        "page /": get("/"),
        "page /productions/active": get("/productions/active"),
        "page /productions/finished-0": get("/productions/finished-0"),
        "page /sites/local": get("/sites/local"),
        "page /jobs?production=active&state=running": get(
            "/jobs?production=active&state=running"),
        f"page /jobs/{pruned_job} (finished)": get(f"/jobs/{pruned_job}"),
        "api /productions": get("/api/v1/productions"),
        "api /productions/active": get("/api/v1/productions/active"),
        "tower status (in process)": status,
    }
    try:
        return {name: timings(call, repeat) for name, call in targets.items()}
    finally:
        server.shutdown()


def run(jobs: int, count: int, moves: int, active: int, repeat: int,
        directory: Path) -> dict[str, Any]:
    with postgres() as database:
        config = write_home(directory / "home", database)
        runtime = Runtime.open(load_config(config))
        try:
            result: dict[str, Any] = {"jobs": jobs + active, "finished_jobs": jobs,
                                      "productions": count, "events_per_job": moves,
                                      **fill(runtime, jobs, count, moves, active, directory)}
            result["before prune"] = pages(runtime, config, repeat)
            started = time.perf_counter()
            with transaction(runtime.engine) as session:
                pruned = prune.prune(session, runtime.config.retention.finished_for)
            result["prune_s"] = time.perf_counter() - started
            result["pruned"] = {"productions": len(pruned.productions),
                                "job_events": pruned.job_events,
                                "activity_rows": pruned.activity_rows}
            started = time.perf_counter()
            with runtime.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE")
            result["vacuum_s"] = time.perf_counter() - started
            result["after prune"] = pages(runtime, config, repeat)
        finally:
            runtime.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000_000,
                        help="jobs of the finished productions, in all")
    parser.add_argument("--productions", type=int, default=10)
    parser.add_argument("--active", type=int, default=200_000)
    parser.add_argument("--events-per-job", type=int, default=5, choices=range(1, 6))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args.jobs, args.productions, args.events_per_job, args.active,
                     args.repeat, Path(scratch))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['jobs']:,} jobs ({result['finished_jobs']:,} finished, in "
          f"{result['productions']} productions, {result['events_per_job']} events a job): "
          f"filled in {result['fill_finished_s']:.0f}s + {result['fill_active_s']:.0f}s, "
          f"active shaped in {result['shape_active_s']:.0f}s")
    print(f"prune: {result['prune_s']:.1f}s, {result['pruned']}; VACUUM ANALYZE "
          f"{result['vacuum_s']:.0f}s")
    for when in ("before prune", "after prune"):
        for what, numbers in result[when].items():
            print(f"{when:<13} {what:<44} p50 {numbers['median_ms']:7.1f} ms  p95 "
                  f"{numbers['p95_ms']:7.1f} ms  mean {numbers['mean_ms']:7.1f} ms  "
                  f"n={numbers['n']}")


if __name__ == "__main__":
    main()
