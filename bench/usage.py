"""What reading a production's usage distributions costs as it grows, in PostgreSQL.

    .venv/bin/python bench/usage.py [--attempts 1000000] [--repeat 20] [--postgres URL] [--json]

Writes --attempts usage rows (successful attempts) for one production, then as many for
another, then times, --repeat times each: `usage.distribution` (what `tower show`
and the production page read: the latest usage.SAMPLE rows), one `tune: auto` look at the
production (the same sample, and the decisions), and for reference an exact SQL
percentile over all the production's rows (`percentile_cont`, PostgreSQL only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func
from sqlmodel import Session, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.submit import postgres_database  # noqa: E402
from tests.conftest import POSTGRES_ADMIN, write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.loops import tune  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.model import usage  # noqa: E402
from tower.model.db import bulk_insert, transaction  # noqa: E402
from tower.model.models import Production, Usage  # noqa: E402
from tower.runtime import Runtime  # noqa: E402

#: Rows written per transaction.
CHUNK = 50_000


def fill(runtime: Runtime, production_ids: list[int], attempts: int) -> float:
    """Write `attempts` usage rows for each production, interleaved as pilots would; the
    seconds it took."""
    started = time.perf_counter()
    for first in range(0, attempts, CHUNK):
        rows = [{"production_id": pid, "job_id": n + 1, "attempt": 1, "site": "local",
                 "events": 100, "cores": 1, "max_rss_mb": 500 + n % 300,
                 "cpu_seconds": 50.0 + n % 40, "wall_seconds": 60.0 + n % 50}
                for n in range(first, min(first + CHUNK, attempts)) for pid in production_ids]
        with transaction(runtime.engine) as session:
            bulk_insert(session, Usage, rows)
    with runtime.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE usage")
    return time.perf_counter() - started


def timed(repeat: int, run: Callable[[], Any]) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2),
            "mean_ms": round(statistics.fmean(times), 2),
            "p90_ms": round(times[max(0, int(0.9 * len(times)) - 1)], 2),
            "max_ms": round(times[-1], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", default=POSTGRES_ADMIN,
                        help="an admin URL of the server to make the database in")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    url, name = postgres_database(options.postgres)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            directory = Path(scratch)
            runtime = Runtime.open(load_config(write_home(directory / "home", url)))
            with transaction(runtime.engine) as session:
                for made in ("watched", "beside"):
                    path = toy_production(directory, made, jobs=10, tune={"min_sample": 5})
                    for item in productions.plan(session, path, runtime.config):
                        productions.create(session, item)
            with Session(runtime.engine) as session:
                ids = {p.name: p.id or 0 for p in session.exec(select(Production)).all()}
            # the watched production's rows first, then as many of another since: its
            # latest rows are the oldest of the table
            filled = fill(runtime, [ids["watched"]], options.attempts)
            filled += fill(runtime, [ids["beside"]], options.attempts)
            watched = ids["watched"]

            def distribution() -> Any:
                with Session(runtime.engine) as session:
                    return usage.distribution(session, watched)

            def look() -> Any:
                with transaction(runtime.engine) as session:
                    production = session.get(Production, watched)
                    assert production is not None
                    decisions = tune.tune(session, runtime.config, production)
                    session.rollback()  # the same look each time
                    return decisions

            def exact() -> Any:
                with Session(runtime.engine) as session:
                    return session.exec(select(
                        func.percentile_cont(0.95).within_group(Usage.max_rss_mb),
                        func.percentile_cont(0.95).within_group(Usage.wall_seconds))
                        .where(Usage.production_id == watched)).one()

            result = {"attempts": options.attempts, "fill_s": round(filled, 1),
                      "sample": usage.SAMPLE, "distribution": timed(options.repeat,
                                                                    distribution),
                      "tune_look": timed(options.repeat, look),
                      "exact_sql_p95_all_rows": timed(max(3, options.repeat // 4), exact)}
            runtime.close()
    finally:
        with psycopg.connect(options.postgres, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
