"""Pilots versus one `sbatch` per job and versus a bare shell loop in one batch job, on the
same single-node SLURM cluster, in one run.

    .venv/bin/python bench/slurm.py [--jobs 200] [--command true] [--repeat 1] [--json]

All ways run the same one-line job (`--command`, default `true`): one sbatch job per
command, 16 at once (one CPU each, 16 on the node); 2 pilots x 8 payload slots; and the
floor: one sbatch job whose shell script runs the --jobs commands one after another, each
as a process (its program by path, so `true` is not the shell's builtin), no bookkeeping.
The makespan runs from the first submission until every job has ended: for sbatch,
from the first `sbatch` until squeue is empty; for the loop, from its `sbatch` to the end
time its script writes as its last line (of it, the loop's own run, from its first line);
for pilots, from the factory's first
`sbatch` of a pilot (the pilot's submission time) to the last job's move to done, read
from the job events, with the tower (PostgreSQL, RabbitMQ) already running. The whole
`tower run --until-done`, which also starts the tower and ends the pilots, is shown too.

Needs what `make test` starts and installs: SLURM and munge binaries,
PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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

SLOTS, PILOTS = 8, 2


def one_sbatch_per_job(cluster: SlurmCluster, jobs: int, command: str,
                       directory: Path) -> float:
    started = time.perf_counter()
    for _ in range(jobs):
        cluster.run("sbatch", "--parsable", "--cpus-per-task=1", "--job-name=bench-sbatch",
                    f"--output={directory}/%j.out", "--wrap", command)
    while cluster.run("squeue", "--noheader", "--name=bench-sbatch").stdout.strip():
        time.sleep(0.1)
    return time.perf_counter() - started


def one_batch_job_loop(cluster: SlurmCluster, jobs: int, command: str,
                       directory: Path) -> tuple[float, float]:
    """The makespan of one sbatch job running the commands in a bare shell loop, and of it
    the loop's own run (its script's first line to its last)."""
    argv = shlex.split(command)
    program = shutil.which(argv[0])
    if program is None:
        raise RuntimeError(f"--command: {argv[0]!r} is not a program on PATH")
    line = shlex.join([program, *argv[1:]])
    script = directory / "loop.sh"
    script.write_text("#!/bin/sh\n"
                      f"date +%s.%N > {directory}/began\n"
                      f"i=0; while [ $i -lt {jobs} ]; do {line}; i=$((i + 1)); done\n"
                      f"date +%s.%N > {directory}/ended\n")
    started = time.time()
    cluster.run("sbatch", "--parsable", "--cpus-per-task=1", "--job-name=bench-loop",
                f"--output={directory}/%j.out", str(script))
    while cluster.run("squeue", "--noheader", "--name=bench-loop").stdout.strip():
        time.sleep(0.1)
    began, ended = (float((directory / name).read_text()) for name in ("began", "ended"))
    return ended - started, ended - began


def through_pilots(cluster: SlurmCluster, jobs: int, command: str,
                   directory: Path) -> tuple[float, float, float]:
    """The makespan (submission of the first pilot to the last job's end, from the pilot
    and job records), of it the pilots' start-up (submission to the first claim), and the
    whole `tower run --until-done`, which also ends the pilots."""
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
            "name": "oneline", "software": "coreutils", "command": shlex.split(command),
            "events_total": jobs, "events_per_job": 1, "walltime": "5m"}))
        env = {**cluster.env, "TOWER_CONFIG": str(config)}
        tower = [sys.executable, "-m", "tower.cli"]
        subprocess.run([*tower, "submit", str(request)], env=env, check=True,
                       capture_output=True)
        wall = time.perf_counter()
        subprocess.run([*tower, "run", "--until-done", "--timeout", "1800"], env=env,
                       check=True, capture_output=True)
        wall = time.perf_counter() - wall
        with psycopg.connect(database) as connection:
            row = connection.execute(
                "select (select min(submitted_at) from pilot), "
                "(select min(started_at) from attempt), "
                "(select max(at) from jobevent where to_state = 'done')").fetchone()
        assert row is not None
        submitted, first_claim, last_done = row
        return ((last_done - submitted).total_seconds(),
                (first_claim - submitted).total_seconds(), wall)


def run(jobs: int, command: str, repeat: int = 1) -> dict[str, object]:
    """Makespans of the three ways, `repeat` times each, on one cluster started for the
    run."""
    results: dict[str, list[float]] = {"sbatch per job": [], "pilots": [],
                                       "pilots, of it their start-up": [],
                                       "pilots, whole run": [],
                                       "one batch job, bare loop": [],
                                       "one batch job, of it the loop": []}
    with tempfile.TemporaryDirectory() as scratch, running_cluster(Path(scratch)) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)  # the tower's own sbatch calls
        version = cluster.run("sinfo", "--version").stdout.strip()
        for number in range(repeat):
            work = Path(scratch) / f"run{number}"
            for way in ("sbatch", "loop"):
                (work / way).mkdir(parents=True)
            loop, inside = one_batch_job_loop(cluster, jobs, command, work / "loop")
            results["one batch job, bare loop"].append(loop)
            results["one batch job, of it the loop"].append(inside)
            results["sbatch per job"].append(
                one_sbatch_per_job(cluster, jobs, command, work / "sbatch"))
            makespan, start_up, wall = through_pilots(cluster, jobs, command, work / "pilots")
            results["pilots"].append(makespan)
            results["pilots, of it their start-up"].append(start_up)
            results["pilots, whole run"].append(wall)
    return {"jobs": jobs, "command": command, "slurm": version,
            "layout": f"16 CPUs; {PILOTS} pilots x {SLOTS} slots", "makespans_s": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--command", default="true", help="the one-line job")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    result = run(args.jobs, args.command, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    makespans: dict[str, list[float]] = result["makespans_s"]  # type: ignore[assignment]
    print(f"{args.jobs} jobs of `{args.command}`, {result['layout']}, {result['slurm']}")
    for label, times in makespans.items():
        print(f"{label:<30} makespan median {statistics.median(times):7.1f}s "
              f"({min(times):.1f}-{max(times):.1f})")
    pilots = statistics.median(makespans["pilots"])
    print(f"pilots are {statistics.median(makespans['sbatch per job']) / pilots:.2f}x faster "
          f"than one sbatch per job; their makespan is "
          f"{pilots / statistics.median(makespans['one batch job, bare loop']):.2f}x the "
          "bare loop's")


if __name__ == "__main__":
    main()
