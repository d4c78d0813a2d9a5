"""Time to submit a production of N jobs (validation + bulk insert), on SQLite and PostgreSQL,
and `tower submit` beside a raw COPY of the very same rows.

    .venv/bin/python bench/submit.py [--jobs 100000] [--repeat 3] [--postgres URL]
                                     [--copy-jobs 1000000] [--copy-repeat 3]

1. In process, --repeat times per database: the median and spread, and jobs per second.
2. On PostgreSQL, --copy-repeat pairs, interleaved: `tower submit` of --copy-jobs jobs as a
   command (start-up, validation, the jobs, the commit and the ANALYZE after it) into a
   fresh database, then the raw COPY of the rows it wrote (the same columns, read back
   with COPY TO) into the job table of a scratch database made at the same schema
   (indexes, constraints, the production's row): the floor any submit of those rows can
   reach. Mean, p95 and the ratio of each pair; the submit's peak memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.model.db import create_schema, make_engine, transaction  # noqa: E402
from tower.model.models import Job  # noqa: E402
from tower.runtime import Runtime  # noqa: E402

TOWER = [sys.executable, "-m", "tower.cli"]
#: The columns a submit writes: what differs per job, the state, and those with defaults.
SUBMITTED = [column.name for column in Job.__table__.columns
             if column.name in (*productions.JOB_COLUMNS, "state")
             or column.name != "id" and column.default is not None]


def once(url: str, jobs: int, directory: Path) -> float:
    runtime = Runtime.open(load_config(write_home(directory, url)))
    request = toy_production(directory, name=f"bench-{uuid.uuid4().hex[:8]}", jobs=jobs,
                             events=10)
    started = time.perf_counter()
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, request, runtime.config):
            productions.create(session, item)
    elapsed = time.perf_counter() - started
    runtime.close()
    return elapsed


def postgres_database(admin: str) -> tuple[str, str]:
    name = f"gt_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{admin.rsplit('/', 1)[0]}/{name}", name


def timed_runs(kind: str, admin: str, repeat: int,
               run: Callable[[str, Path], float]) -> list[float]:
    """`run(database_url, scratch_dir)` `repeat` times on a fresh database of `kind`
    (sqlite, or postgresql made and dropped through `admin`); returns its timings."""
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            directory = Path(scratch)
            if kind == "sqlite":
                times.append(run(f"sqlite:///{directory / 'b.db'}", directory))
                continue
            url, name = postgres_database(admin)
            try:
                times.append(run(url, directory))
            finally:
                with psycopg.connect(admin, autocommit=True) as connection:
                    connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return times


def tower_submit(config: Path, name: str, jobs: int, directory: Path) -> dict[str, float]:
    """`tower submit` of one production of `jobs` jobs as a subprocess: seconds and peak
    memory (MiB, wait4's rusage)."""
    request = directory / f"{name}.yaml"
    request.write_text(yaml.safe_dump({
        "name": name, "software": "coreutils", "command": ["/bin/true"],
        "events_total": jobs * 10, "events_per_job": 10, "walltime": "5m"}))
    started = time.perf_counter()
    process = subprocess.Popen([*TOWER, "submit", str(request)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE,
                               env={**os.environ, "TOWER_CONFIG": str(config)})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"tower submit failed: {process.stderr.read().decode()[-2000:]}"
                           if process.stderr else "tower submit failed")
    return {"submit_s": seconds, "submit_peak_mib": usage.ru_maxrss / 1024}


def raw_copy(url: str, production: str, admin: str, directory: Path) -> float:
    """Seconds to COPY the jobs of `production` in the database at `url` (the columns a
    submit writes) into the job table of a scratch database of the same schema, in one
    transaction, from a file written beforehand."""
    rows, head = directory / "jobs.copy", directory / "production.copy"
    columns = ", ".join(f'"{name}"' for name in SUBMITTED)
    with psycopg.connect(url) as source:
        [production_id] = source.execute("SELECT id FROM production WHERE name = %s",
                                         [production]).fetchone() or [None]
        for path, query in ((head, f"SELECT * FROM production WHERE id = {production_id}"),
                            (rows, f"SELECT {columns} FROM job WHERE production_id = "
                                   f"{production_id} ORDER BY id")):
            with path.open("wb") as sink, source.cursor().copy(
                    f"COPY ({query}) TO STDOUT") as copy:
                for block in copy:
                    sink.write(block)
    scratch, name = postgres_database(admin)
    try:
        engine = make_engine(scratch)
        create_schema(engine)
        engine.dispose()
        with psycopg.connect(scratch) as target:
            with target.cursor().copy("COPY production FROM STDIN") as copy:
                copy.write(head.read_bytes())
            target.commit()
            started = time.perf_counter()
            with rows.open("rb") as source_file, target.cursor().copy(
                    f"COPY job ({columns}) FROM STDIN") as copy:
                while block := source_file.read(1 << 20):
                    copy.write(block)
            target.commit()
            return time.perf_counter() - started
    finally:
        rows.unlink(missing_ok=True)
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def submit_against_copy(admin: str, jobs: int, directory: Path) -> dict[str, float]:
    """One pair: `tower submit` into a fresh database, then the raw COPY of its rows."""
    url, name = postgres_database(admin)
    try:
        config = write_home(directory / "home", url)
        result = tower_submit(config, "million", jobs, directory)
        result["copy_s"] = raw_copy(url, "million", admin, directory)
        result["ratio"] = result["submit_s"] / result["copy_s"]
        return result
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)]
    return (f"mean {statistics.mean(ordered):.2f} p50 {statistics.median(ordered):.2f} "
            f"p95 {p95:.2f} (n={len(ordered)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres",
                        default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--copy-jobs", type=int, default=1_000_000)
    parser.add_argument("--copy-repeat", type=int, default=3,
                        help="pairs of `tower submit` and raw COPY (0: none)")
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql"):
        times = timed_runs(kind, args.postgres, args.repeat,
                           lambda url, directory: once(url, args.jobs, directory))
        median = statistics.median(times)
        print(f"{kind:<11} {args.jobs} jobs: median {median:.2f}s "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}) "
              f"= {args.jobs / median:,.0f} jobs/s")
    pairs = []
    for _ in range(args.copy_repeat):
        with tempfile.TemporaryDirectory() as scratch:
            pairs.append(submit_against_copy(args.postgres, args.copy_jobs, Path(scratch)))
    if pairs:
        print(f"PostgreSQL, {args.copy_jobs:,} jobs, interleaved pairs:")
        for key, what in (("submit_s", "tower submit s"), ("copy_s", "raw COPY s"),
                          ("ratio", "submit / COPY"), ("submit_peak_mib", "submit peak MiB")):
            print(f"  {what:<16} {spread([pair[key] for pair in pairs])}")


if __name__ == "__main__":
    main()
