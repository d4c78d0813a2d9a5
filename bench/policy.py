"""Cost of failure handling: the policy's decision alone, and settling lost attempts in the
database (end the attempt, read the job's history, decide, move the job, record why).

    .venv/bin/python bench/policy.py [--attempts 2000] [--repeat 3] [--postgres URL]

Prints decisions per second, and attempts settled per second on SQLite and PostgreSQL
(the monitor writing off N silent attempts in one cycle).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402
from sqlmodel import select  # noqa: E402

from bench.submit import timed_runs  # noqa: E402
from catalog.timeutil import ago, utcnow  # noqa: E402
from tests.conftest import write_home  # noqa: E402
from tests.integration.conftest import toy_production  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.management import productions  # noqa: E402
from tower.model.db import transaction  # noqa: E402
from tower.model.models import Attempt, Job  # noqa: E402
from tower.model.states import JobState, move_jobs  # noqa: E402
from tower.retries import retry  # noqa: E402
from tower.retries.outcomes import Outcome  # noqa: E402
from tower.retries.policy import Ended, decide  # noqa: E402
from tower.runtime import Runtime  # noqa: E402


def decisions_per_second(count: int = 100_000) -> float:
    policy = load_config(write_home(Path(tempfile.mkdtemp()), "sqlite://")).policies["standard"]
    history = [Ended(Outcome.NODE_FAILURE), Ended(Outcome.EXIT_CODE, 1),
               Ended(Outcome.EXIT_CODE, 75)]
    started = time.perf_counter()
    for _ in range(count):
        decide(policy, history)
    return count / (time.perf_counter() - started)


def settle_once(url: str, attempts: int, directory: Path) -> float:
    """Seconds for one monitor pass to write off `attempts` silent attempts."""
    runtime = Runtime.open(load_config(write_home(directory, url)))
    request = toy_production(directory, name=f"bench-{uuid.uuid4().hex[:8]}", jobs=attempts,
                             events=1)
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, request, runtime.config):
            productions.create(session, item)
        ids = list(session.exec(select(Job.id)).all())
        for source, target in ((JobState.DEFINED, JobState.ASSIGNED),
                               (JobState.ASSIGNED, JobState.QUEUED),
                               (JobState.QUEUED, JobState.RUNNING)):
            move_jobs(session, ids, source, target, "bench", site="local", attempt=1)
        long_ago = ago(3600)
        session.execute(insert(Attempt), [
            {"job_id": job_id, "number": 1, "pilot_id": "bench", "site": "local",
             "started_at": long_ago, "heartbeat_at": long_ago} for job_id in ids])
    started = time.perf_counter()
    with transaction(runtime.engine) as session:
        lost = retry.lose_silent(session, runtime.config, utcnow())
    elapsed = time.perf_counter() - started
    assert len(lost) == attempts, len(lost)
    runtime.close()
    return elapsed


def settle_run(attempts: int, admin: str) -> dict[str, Any]:
    """One monitor pass settling `attempts` lost attempts on a fresh PostgreSQL database
    (made and dropped through `admin`): the suite's figure."""
    [seconds] = timed_runs("postgresql", admin, 1,
                           lambda url, directory: settle_once(url, attempts, directory))
    return {"attempts": attempts, "seconds": seconds, "rate": attempts / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres",
                        default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    print(f"decide(): {decisions_per_second():,.0f} decisions/s (standard policy, "
          "a history of three)")
    for kind in ("sqlite", "postgresql"):
        times = timed_runs(kind, args.postgres, args.repeat,
                           lambda url, directory: settle_once(url, args.attempts, directory))
        median = statistics.median(times)
        print(f"{kind}: {args.attempts} lost attempts settled in median {median:.2f}s "
              f"({min(times):.2f}-{max(times):.2f}), {args.attempts / median:,.0f} attempts/s")


if __name__ == "__main__":
    main()
