"""Pilots versus one `sbatch` per job, on the same single-node SLURM cluster, in one run.

    .venv/bin/python bench/slurm.py [--jobs 200] [--seconds 1] [--repeat 1]

Both ways run the same short job (`sleep SECONDS`) with the same parallelism:
16 CPUs on the node, one per sbatch job, and 4 pilots x 4 payload slots. The
makespan runs from the first submission until every job has ended: for
sbatch, until squeue is empty; for pilots, from starting `tower run
--until-done` (PostgreSQL, RabbitMQ) to the last job's move to done, read from
the job events. The whole `tower run`, which also ends the pilots, is shown too.

Needs what `make test` starts and installs: SLURM and munge binaries,
PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import postgres, vhost  # noqa: E402
from tests.cluster import SlurmCluster, running_cluster  # noqa: E402
from tests.conftest import write_home  # noqa: E402

SLOTS, PILOTS = 4, 4


def one_sbatch_per_job(cluster: SlurmCluster, jobs: int, seconds: float,
                       directory: Path) -> float:
    started = time.perf_counter()
    for _ in range(jobs):
        cluster.run("sbatch", "--parsable", "--cpus-per-task=1", "--job-name=bench-sbatch",
                    f"--output={directory}/%j.out", "--wrap", f"sleep {seconds}")
    while cluster.run("squeue", "--noheader", "--name=bench-sbatch").stdout.strip():
        time.sleep(0.1)
    return time.perf_counter() - started


def through_pilots(cluster: SlurmCluster, jobs: int, seconds: float,
                   directory: Path) -> tuple[float, float]:
    """The makespan (submission of the first pilot to the last job's end, from the job
    events) and the whole `tower run --until-done`, which also ends the pilots."""
    with postgres() as database, vhost() as broker:
        config = write_home(
            directory, database,
            site={"batch": "slurm", "batch_options": {"partition": cluster.partition},
                  "pilot_command": [sys.executable, "-m", "pilots.main"],
                  "pilot": {"slots": SLOTS, "cores": SLOTS, "walltime": "1h",
                            "idle_timeout": 30},
                  "limits": {"max_queued": PILOTS, "max_running": PILOTS,
                             "max_per_cycle": PILOTS}},
            broker=broker, loops={"interval": 1},
            monitor={"heartbeat_interval": 10, "heartbeat_timeout": 60})
        request = directory / "sleep.yaml"
        request.write_text(yaml.safe_dump({
            "name": "sleep", "software": "coreutils", "command": ["sleep", str(seconds)],
            "events_total": jobs, "events_per_job": 1, "walltime": "5m"}))
        env = {**cluster.env, "TOWER_CONFIG": str(config)}
        tower = [sys.executable, "-m", "tower.cli"]
        subprocess.run([*tower, "submit", str(request)], env=env, check=True,
                       capture_output=True)
        started, wall = time.time(), time.perf_counter()
        subprocess.run([*tower, "run", "--until-done", "--timeout", "1800"], env=env,
                       check=True, capture_output=True)
        wall = time.perf_counter() - wall
        with psycopg.connect(database) as connection:
            row = connection.execute("select max(at) from jobevent where to_state = 'done'")
            last = row.fetchone()[0]  # type: ignore[index]
        return last.timestamp() - started, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"sbatch per job": [], "pilots": [],
                                       "pilots, whole run": []}
    with tempfile.TemporaryDirectory() as scratch, running_cluster(Path(scratch)) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)  # the tower's own sbatch calls
        version = cluster.run("sinfo", "--version").stdout.strip()
        for number in range(args.repeat):
            work = Path(scratch) / f"run{number}"
            (work / "sbatch").mkdir(parents=True)
            results["sbatch per job"].append(
                one_sbatch_per_job(cluster, args.jobs, args.seconds, work / "sbatch"))
            makespan, wall = through_pilots(cluster, args.jobs, args.seconds, work / "pilots")
            results["pilots"].append(makespan)
            results["pilots, whole run"].append(wall)
    print(f"{args.jobs} jobs of `sleep {args.seconds:g}`, 16 at a time, {version}")
    for label, times in results.items():
        print(f"{label:<18} makespan median {statistics.median(times):7.1f}s "
              f"({min(times):.1f}-{max(times):.1f})")
    ratio = statistics.median(results["sbatch per job"]) / statistics.median(results["pilots"])
    print(f"pilots are {ratio:.2f}x faster than one sbatch per job")


if __name__ == "__main__":
    main()
