"""Time to submit a production of N jobs (validation + bulk insert), on SQLite and PostgreSQL.

    .venv/bin/python bench/submit.py [--jobs 100000] [--repeat 3] [--postgres URL]

Prints the median and spread per database, and jobs per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.model.db import transaction  # noqa: E402
from tower.runtime import Runtime  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres",
                        default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql"):
        times = timed_runs(kind, args.postgres, args.repeat,
                           lambda url, directory: once(url, args.jobs, directory))
        median = statistics.median(times)
        print(f"{kind:<11} {args.jobs} jobs: median {median:.2f}s "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}) "
              f"= {args.jobs / median:,.0f} jobs/s")


if __name__ == "__main__":
    main()
