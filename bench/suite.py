"""The benchmark suite: gridtower and the tools people would pick instead, on the same
machine, in one run, on the same work. `make bench` runs it.

    .venv/bin/python bench/suite.py [--repeat 3] [--heavy-repeat 2] [--jobs 20000]
                                    [--output-bytes 100000] [--settle 2000]
                                    [--scale-jobs 1000000] [--out bench/results]

Writes OUT/REPORT.md and OUT/results.json: every figure's median and spread (min-max)
over the repeated runs, the versions of everything, and the ratios gridtower / peer; the
CLI's answer times, measured apart by bench/cli.py, stay in the report (from OUT/cli.json).

1. Ceilings of this machine: process spawns per second, pika's confirmed publish and
   consume rates (bench/peers.py spawn, pika), --repeat times.
2. Durable throughput, --jobs jobs each running /bin/true as a subprocess, every outcome
   committed: gridtower (PostgreSQL, RabbitMQ, two local pilots; bench/gridtower.py),
   Celery 5 (RabbitMQ broker, PostgreSQL result backend, its worker running the
   subprocess) and Parsl's HighThroughputExecutor (two workers, a bash_app), --heavy-repeat
   times each, interleaved so that a slow minute of the machine hurts all alike.
3. The gap inside a pilot between one payload's end and the next start in its slot:
   from the throughput runs' pilots, and from one pilot with one slot.
4. Pilots versus one `sbatch` per job on the single-node SLURM: 200 one-line jobs.
5. Scale: a 1,000,000-job production (bench/scale.py), once.
6. The swarm: simulated pilots at --swarm-levels, --swarm-seconds measured at each, against
   one tower (bench/swarm.py), once; its plot goes to OUT/swarm.svg.

The peers run from their own virtual environment (bench/peers-venv.sh makes it).
Needs the services `make test` starts.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gridtower, loop, policy, scale, slurm, swarm  # noqa: E402
from bench.broker import ADMIN  # noqa: E402
from bench.report import write_report  # noqa: E402

PEERS_PYTHON = ROOT / "bench" / ".peers-venv" / "bin" / "python"


def step(title: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {title}", file=sys.stderr, flush=True)


def peer(kind: str, *options: str, timeout: float = 900) -> dict[str, Any]:
    """One run of bench/peers.py KIND in the peers' environment; its JSON."""
    done = subprocess.run([str(PEERS_PYTHON), str(ROOT / "bench" / "peers.py"), kind,
                           *options, "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"peers.py {kind} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def measured(results: dict[str, Any], kind: str, run: Callable[[], dict[str, Any]]) -> None:
    """One run of a figure into results["runs"][kind]; a run that fails is kept in
    results["failures"] with its error and the suite goes on (the report says "not
    measured"), so one broken step does not lose an hour of figures."""
    try:
        results["runs"].setdefault(kind, []).append(run())
    except Exception as exc:  # noqa: BLE001 (any failure of a step is reported, not fatal)
        print(f"  {kind} failed: {exc!r}", file=sys.stderr, flush=True)
        results.setdefault("failures", {}).setdefault(kind, []).append(repr(exc)[-2000:])


def _loop(directory: Path, repeat: int, batch: int) -> dict[str, Any]:
    with loop.services(None, None) as (database, broker):
        return loop.run(100_000, 20_000, repeat, directory, database, broker, batch)


def in_scratch(run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        return run(Path(scratch))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "machine": platform.machine(),
             "kernel": platform.release(), "cpus": str(os.cpu_count()),
             "gridtower": _command("git", "-C", str(ROOT), "describe", "--always", "--dirty")}
    for package in ("sqlalchemy", "sqlmodel", "psycopg", "flask", "h11", "pika",
                    "requests", "pydantic"):
        found[package] = importlib.metadata.version(package)
    found["postgresql"] = _command("psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc",
                                   "show server_version")
    found["rabbitmq"] = _command("rabbitmqctl", "-q", "version")
    with open("/proc/meminfo") as meminfo:
        found["memory"] = f"{int(meminfo.readline().split()[1]) // 1024 ** 2} GiB"
    return found


def _command(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGPASSWORD": "postgres"}).stdout.strip()
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the short figures")
    parser.add_argument("--heavy-repeat", type=int, default=2,
                        help="runs of each 20,000-job throughput figure")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per throughput run")
    parser.add_argument("--output-bytes", type=int, default=100_000,
                        help="the size of each full-path job's one output")
    parser.add_argument("--settle", type=int, default=2000,
                        help="lost attempts settled in one monitor pass")
    parser.add_argument("--loop-repeat", type=int, default=5,
                        help="rounds of the broker loop alone (bench/loop.py)")
    parser.add_argument("--loop-batch", type=int, default=5000,
                        help="loops.batch_size of the broker loop alone")
    parser.add_argument("--scale-jobs", type=int, default=1_000_000)
    parser.add_argument("--drain", type=int, default=200_000,
                        help="jobs the broker loop publishes in the scale run")
    parser.add_argument("--slurm-jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=64, help="payload slots per pilot")
    # about 5 minutes: each level's ramp (at most twice its seconds) and its seconds
    parser.add_argument("--swarm-levels", type=swarm.levels_option, default=[1000, 5000],
                        help="simulated pilots at each level of the swarm step")
    parser.add_argument("--swarm-seconds", type=float, default=45,
                        help="seconds measured at each level of the swarm step")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "versions": versions(), "runs": {}}
    runs: dict[str, list[dict[str, Any]]] = results["runs"]

    for number in range(args.repeat):
        step(f"ceilings, run {number + 1} of {args.repeat}", started)
        measured(results, "spawn", lambda: peer("spawn"))
        measured(results, "pika", lambda: peer("pika"))

    jobs = str(args.jobs)
    for number in range(args.heavy_repeat):
        step(f"durable throughput of {args.jobs} jobs, run {number + 1} of "
             f"{args.heavy_repeat}: gridtower", started)
        measured(results, "gridtower", lambda: in_scratch(
            lambda directory: gridtower.run(args.jobs, 2, args.slots, directory)))
        step("  celery", started)
        measured(results, "celery", lambda: peer("celery", "--jobs", jobs))
        step("  parsl", started)
        measured(results, "parsl", lambda: peer("parsl", "--jobs", jobs))
        step(f"  gridtower, the full path: one {args.output_bytes:,}-byte output per job, "
             "staged to two destinations and cataloged", started)
        measured(results, "full path", lambda: in_scratch(
            lambda directory: gridtower.run(args.jobs, 2, args.slots, directory,
                                            output_bytes=args.output_bytes)))

    for number in range(args.repeat):
        step(f"gap in a pilot of one slot, run {number + 1} of {args.repeat}", started)
        measured(results, "one slot", lambda: in_scratch(
            lambda directory: gridtower.run(1000, 1, 1, directory)))

    step(f"{args.slurm_jobs} one-line jobs on SLURM: a bare loop in one batch job, one "
         "sbatch each, pilots", started)
    measured(results, "slurm", lambda: slurm.run(args.slurm_jobs, "true", repeat=1))
    if "slurm" in runs:
        results["versions"]["slurm"] = runs["slurm"][0]["slurm"]

    for number in range(args.repeat):
        step(f"settling {args.settle:,} lost attempts, run {number + 1} of {args.repeat}",
             started)
        measured(results, "settle", lambda: policy.settle_run(args.settle, ADMIN))

    step(f"the broker loop alone: {args.loop_repeat} rounds of 20,000 jobs of 100,000, "
         f"batch {args.loop_batch}", started)
    measured(results, "loop", lambda: in_scratch(lambda directory: _loop(
        directory, args.loop_repeat, args.loop_batch)))

    step(f"scale: a production of {args.scale_jobs:,} jobs", started)
    measured(results, "scale", lambda: in_scratch(
        lambda directory: scale.run(args.scale_jobs, args.drain, 20, directory)))

    step(f"swarm: {', '.join(map(str, args.swarm_levels))} simulated pilots, "
         f"{args.swarm_seconds:.0f} s each", started)
    measured(results, "swarm", lambda: in_scratch(
        lambda directory: swarm.run(args.swarm_levels, args.swarm_seconds, directory,
                                    jobs=100_000)))

    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    if "swarm" in runs:
        (args.out / "swarm.svg").write_text(swarm.plot(runs["swarm"][0]))
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_report(results, args.out / "REPORT.md")
    step(f"done: {args.out / 'REPORT.md'}", started)


if __name__ == "__main__":
    main()
