"""Page and status times with a production of a million jobs in PostgreSQL.

    .venv/bin/python bench/pages.py [--jobs 1000000] [--repeat 20] [--postgres URL] [--json]

Submits one production of --jobs jobs, moves them through the state machine the way the
tower does (in bulk, so the tally and the activity are written as in production: 30% done,
1% failed, 2,000 running, 1,000 queued, the rest defined), then serves the pages and the
API on loopback and times each answer --repeat times. For reference it also times the
per-state count the pages used before the tally: a GROUP BY over the jobs table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import requests
from sqlalchemy import func
from sqlmodel import Session, col, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.submit import postgres_database  # noqa: E402
from tests.conftest import write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.cli import main as tower_main  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.model import tally  # noqa: E402
from tower.model.db import transaction  # noqa: E402
from tower.model.models import Job  # noqa: E402
from tower.model.states import JobState, move_jobs  # noqa: E402
from tower.runtime import Runtime  # noqa: E402
from web.server import start_server  # noqa: E402

#: Jobs moved per transaction while shaping the production.
CHUNK = 50_000


def _ids(session: Session, state: JobState, limit: int) -> list[int]:
    return [i for i in session.exec(select(Job.id).where(Job.state == state)
                                    .order_by(col(Job.id)).limit(limit)).all() if i]


def shape(runtime: Runtime, jobs: int) -> dict[str, float]:
    """Move jobs along defined -> assigned -> queued -> running -> staging -> done (and some
    to failed), as the tower's loops would; returns the seconds each step took."""
    plan = [(JobState.ASSIGNED, int(jobs * 0.31) + 3000), (JobState.QUEUED, int(jobs * 0.31)
                                                           + 3000),
            (JobState.RUNNING, int(jobs * 0.31) + 2000), (JobState.FAILED, int(jobs * 0.01)),
            (JobState.STAGING, int(jobs * 0.30)), (JobState.DONE, int(jobs * 0.30))]
    source = {JobState.ASSIGNED: JobState.DEFINED, JobState.QUEUED: JobState.ASSIGNED,
              JobState.RUNNING: JobState.QUEUED, JobState.FAILED: JobState.RUNNING,
              JobState.STAGING: JobState.RUNNING, JobState.DONE: JobState.STAGING}
    spent = {}
    for target, count in plan:
        started = time.perf_counter()
        left = count
        while left > 0:
            with transaction(runtime.engine) as session:
                ids = _ids(session, source[target], min(CHUNK, left))
                move_jobs(session, ids, source[target], target, "bench", site="local")
            left -= len(ids)
        spent[str(target)] = time.perf_counter() - started
    with transaction(runtime.engine) as session:
        tally.compact(session)
    return spent


def timings(call: Any, repeat: int) -> dict[str, float]:
    call()  # warm: connections, templates, plans
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"median_ms": 1000 * statistics.median(seconds), "min_ms": 1000 * seconds[0],
            "p95_ms": 1000 * seconds[max(0, int(len(seconds) * 0.95) - 1)],
            "max_ms": 1000 * seconds[-1], "mean_ms": 1000 * statistics.mean(seconds),
            "n": len(seconds)}


def run(url: str, jobs: int, repeat: int, directory: Path) -> dict[str, Any]:
    home = write_home(directory / "home", url)
    runtime = Runtime.open(load_config(home))
    request = toy_production(directory, name="million", jobs=jobs, events=10)
    started = time.perf_counter()
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, request, runtime.config):
            productions.create(session, item)
    submitted = time.perf_counter() - started
    shaped = shape(runtime, jobs)
    server, base = start_server(runtime.config)
    server.bind(runtime)
    some_job = 1 + jobs // 2
    results: dict[str, Any] = {"jobs": jobs, "submit_s": submitted, "shape_s": shaped}
    try:
        http = requests.Session()

        def get(path: str) -> Any:
            def call() -> None:
                answer = http.get(base + path, timeout=60)
                answer.raise_for_status()
            return call

        targets = {
            "page /": get("/"),
            "page /productions/million": get("/productions/million"),
            "page /sites/local": get("/sites/local"),
            "page /jobs?production=million&state=running": get(
                "/jobs?production=million&state=running"),
            f"page /jobs/{some_job}": get(f"/jobs/{some_job}"),
            "api /productions": get("/api/v1/productions"),
            "api /productions/million": get("/api/v1/productions/million"),
            "api /sites": get("/api/v1/sites"),
            "/metrics": get("/metrics"),
        }
        # first right after the bulk moves, with their dead index entries (as between
        # two autovacuum runs), then after VACUUM ANALYZE (the steady state)
        results["requests"] = {name: timings(call, repeat) for name, call in targets.items()}
        with runtime.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE")
        results["requests after vacuum"] = {name: timings(call, repeat)
                                            for name, call in targets.items()}

        def status() -> None:
            with open("/dev/null", "w") as sink:
                stdout, sys.stdout = sys.stdout, sink
                try:
                    tower_main(["--config", str(home), "status", "--json"])
                finally:
                    sys.stdout = stdout

        results["tower status (in process)"] = timings(status, repeat)

        def scan() -> None:
            with Session(runtime.engine) as session:
                session.exec(select(Job.production_id, Job.state, func.count())
                             .group_by(col(Job.production_id), col(Job.state))).all()

        results["reference: GROUP BY over the jobs table"] = timings(scan, min(repeat, 5))
        with Session(runtime.engine) as session:
            [states] = productions.state_counts(session).values()
        results["states"] = states
    finally:
        server.shutdown()
        runtime.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres",
                        default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database (for profiling) and print its URL")
    args = parser.parse_args()
    url, name = postgres_database(args.postgres)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            results = run(url, args.jobs, args.repeat, Path(scratch))
    finally:
        if args.keep:
            print(f"kept {url}", file=sys.stderr)
        else:
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['jobs']:,} jobs: submitted in {results['submit_s']:.1f}s; states "
          f"{results['states']}")
    print("moved: " + ", ".join(f"{state} {seconds:.1f}s"
                                for state, seconds in results["shape_s"].items()))
    rows = {**results["requests"],
            **{f"{name} (after vacuum)": numbers
               for name, numbers in results["requests after vacuum"].items()},
            "tower status (in process)": results["tower status (in process)"],
            "reference: GROUP BY over the jobs table":
                results["reference: GROUP BY over the jobs table"]}
    for what, numbers in rows.items():
        print(f"{what:<64} median {numbers['median_ms']:8.1f} ms  p95 "
              f"{numbers['p95_ms']:8.1f} ms  (min {numbers['min_ms']:.1f}, "
              f"max {numbers['max_ms']:.1f})")


if __name__ == "__main__":
    main()
