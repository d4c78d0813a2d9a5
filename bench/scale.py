"""A production of 1,000,000 jobs: submission, status, the production's API and page, and
the broker loop draining it into RabbitMQ.

    .venv/bin/python bench/scale.py [--jobs 1000000] [--drain 200000] [--repeat 20] [--json]

1. `tower submit` of one production of --jobs jobs into a fresh PostgreSQL database,
   as a subprocess: its wall time and its peak resident memory (wait4's rusage); then,
   for the ratio, a raw COPY of the very rows it wrote into a scratch database of the same
   schema (bench/submit.py).
2. The broker loop (`matchmaker.run_once`, as `tower run` cycles it) matching defined
   jobs to a site and publishing them to RabbitMQ with confirms, until --drain jobs are
   queued: jobs per second. The site's backlog bound is opened to the drain size by its
   pilots' slots (a registered pilot of that many slots), so only the loop's speed
   counts.
3. With the million jobs in the database (defined and queued): `tower status` as a
   command (start-up included) and in process, and `GET` of the production's API
   document and page and of the overview page, each --repeat times, median and p95.

Needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import ADMIN, postgres, vhost  # noqa: E402
from bench.pages import timings  # noqa: E402
from bench.submit import raw_copy, tower_submit  # noqa: E402
from tests.conftest import write_home  # noqa: E402
from tower.cli import main as tower_main  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.loops import matchmaker  # noqa: E402
from tower.model.db import transaction  # noqa: E402
from tower.model.models import Pilot  # noqa: E402
from tower.model.states import PilotState  # noqa: E402
from tower.runtime import Runtime  # noqa: E402
from web.server import start_server  # noqa: E402

TOWER = [sys.executable, "-m", "tower.cli"]
NAME = "million"
#: Pilots that hold the production's 10-minute jobs.
PILOT_SHAPE = {"slots": 2, "cores": 2, "walltime": "1h", "drain_margin": 5, "idle_timeout": 3}


def drain(runtime: Runtime, count: int, timeout: float = 300) -> dict[str, float]:
    """Cycle the broker loop until `count` jobs are queued; jobs per second."""
    slots = int(count / runtime.config.sites["local"].backlog.per_slot) + 1
    with transaction(runtime.engine) as session:
        session.add(Pilot(id="bench-drain", site="local", state=PilotState.RUNNING,
                          slots=slots))
    queued, cycles = 0, 0
    started = time.perf_counter()
    while queued < count and time.perf_counter() - started < timeout:
        queued += matchmaker.run_once(runtime)
        cycles += 1
    seconds = time.perf_counter() - started
    depth = runtime.broker.depth("local.default")
    if depth is None or depth < queued:
        raise RuntimeError(f"{queued} jobs queued but the broker holds {depth}")
    return {"drained": queued, "drain_s": seconds, "drain_rate": queued / seconds,
            "drain_cycles": cycles}


def reads(runtime: Runtime, config: Path, repeat: int) -> dict[str, dict[str, float]]:
    server, base = start_server(runtime.config)
    server.bind(runtime)
    http = requests.Session()

    def get(path: str) -> Any:
        def call() -> None:
            http.get(base + path, timeout=60).raise_for_status()
        return call

    def status_in_process() -> None:
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                tower_main(["--config", str(config), "status", "--json"])
            finally:
                sys.stdout = stdout

    def status_command() -> None:
        subprocess.run([*TOWER, "--config", str(config), "status", "--json"], check=True,
                       stdout=subprocess.DEVNULL)

    try:
        return {
            "tower status (command)": timings(status_command, min(repeat, 5)),
            "tower status (in process)": timings(status_in_process, repeat),
            f"api /productions/{NAME}": timings(get(f"/api/v1/productions/{NAME}"), repeat),
            f"page /productions/{NAME}": timings(get(f"/productions/{NAME}"), repeat),
            "page / (overview)": timings(get("/"), repeat),
        }
    finally:
        server.shutdown()


def run(jobs: int, drained: int, repeat: int, directory: Path) -> dict[str, Any]:
    with postgres() as database, vhost() as broker:
        config = write_home(directory, database, broker=broker,
                            site={"backlog": {"per_slot": 2, "max": drained},
                                  "pilot": PILOT_SHAPE},
                            loops={"batch_size": 5000})
        result: dict[str, Any] = {"jobs": jobs, **tower_submit(config, NAME, jobs, directory)}
        result["copy_s"] = raw_copy(database, NAME, ADMIN, directory)
        result["submit_ratio"] = result["submit_s"] / result["copy_s"]
        runtime = Runtime.open(load_config(config))
        try:
            result.update(drain(runtime, drained))
            result["reads"] = reads(runtime, config, repeat)
        finally:
            runtime.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--drain", type=int, default=200_000,
                        help="jobs the broker loop publishes")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args.jobs, args.drain, args.repeat, Path(scratch))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.jobs:,} jobs submitted in {result['submit_s']:.1f}s, peak "
          f"{result['submit_peak_mib']:.0f} MiB; a raw COPY of the same rows "
          f"{result['copy_s']:.1f}s: {result['submit_ratio']:.2f}x")
    print(f"broker loop: {result['drained']:,} jobs in {result['drain_s']:.1f}s = "
          f"{result['drain_rate']:,.0f} jobs/s over {result['drain_cycles']} cycles")
    for what, numbers in result["reads"].items():
        print(f"{what:<36} median {numbers['median_ms']:8.1f} ms  p95 "
              f"{numbers['p95_ms']:8.1f} ms")


if __name__ == "__main__":
    main()
