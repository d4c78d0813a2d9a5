"""gridtower's durable throughput and its pilots' per-job gap, on PostgreSQL and RabbitMQ.

    .venv/bin/python bench/gridtower.py [--jobs 20000] [--pilots 2] [--slots 64]
                                        [--output-bytes 100000] [--json]

Submits a production of --jobs jobs, each running `/bin/true` as a subprocess, and runs
the tower as it is deployed: `tower serve` (the API) and `tower run --no-api` (the
loops) as two processes, the factory starting --pilots local pilots, every state change
committed to PostgreSQL and every message confirmed by RabbitMQ. The rate counts from
the first claim to the last job done (read from the job events); the wall time from the
tower's start to its end, pilots' start-up and goodbye included, is reported beside it.
CPU seconds are read from /proc per part: the loops, the API, the pilots with their
payloads, PostgreSQL and RabbitMQ. Each pilot logs its slot gaps (the time from a
payload's end to the start of the next payload in that slot); they are read from the
pilots' logs.

With --output-bytes N, the full path: each job writes one file of N bytes instead (`dd`,
one subprocess as `/bin/true` is), which the pilot checksums and leaves in the site's
storage and the stager copies to two local destinations, verifies and catalogs; the rate
then counts from the first claim to the last job done, which is its last file registered
with both copies verified (one transaction). The run checks that the catalog holds every
file once with its two replicas and that each destination holds every file, at its size,
and no partial file; the time from a job's report (`staging`) to its cataloging is
reported as mean, median and p99.

Needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl, as
`make test` starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import postgres, vhost  # noqa: E402
from bench.cpu import GRIDTOWER, CpuMeter  # noqa: E402
from pilots.meter import WATCHES  # noqa: E402
from tests.conftest import write_home  # noqa: E402

TOWER = [sys.executable, "-m", "tower.cli"]
GAPS = re.compile(r"slot gaps: (\d+), median ([\d.]+) ms, p99 ([\d.]+) ms"
                  r"(?:, mean ([\d.]+) ms, max ([\d.]+) ms)?")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the API did not listen on port {port} within {timeout:.0f}s")


#: The full path's two local destinations, as a production names them.
DESTINATIONS = ("near", "far")


def home(directory: Path, database: str, broker: str, pilots: int, slots: int,
         memory_watch: str = "auto") -> Path:
    return write_home(
        directory, database,
        site={"pilot": {"slots": slots, "cores": slots, "walltime": "1h", "idle_timeout": 5,
                        "memory_watch": memory_watch},
              "limits": {"max_queued": pilots, "max_running": pilots,
                         "max_per_cycle": pilots},
              "backlog": {"per_slot": 4}},
        broker=broker, api={"bind": "127.0.0.1", "port": free_port()},
        # the loops' default pause: the API, another process, wakes the matchmaker after
        # claims and the stager after reports (PostgreSQL NOTIFY)
        loops={"interval": 5},
        monitor={"heartbeat_interval": 30, "heartbeat_timeout": 300},
        storage={"destinations": {name: f"local:{directory / name}" for name in DESTINATIONS},
                 "default": [], "retry_delay": 1})


def production(jobs: int, output_bytes: int) -> dict[str, Any]:
    """The request: `/bin/true`, or with output_bytes one file of that size per job, staged
    to both destinations."""
    request: dict[str, Any] = {"name": "trivial", "software": "coreutils",
                               "command": ["/bin/true"], "events_total": jobs,
                               "events_per_job": 1, "walltime": "1m"}
    if output_bytes:
        request.update(command=["/bin/dd", "if=/dev/zero", "of=${output_dir}/out_${index}.dat",
                                f"bs={output_bytes}", "count=1", "status=none"],
                       outputs=["out_*.dat"], destinations=list(DESTINATIONS))
    return request


def run(jobs: int, pilots: int, slots: int, directory: Path, timeout: float = 1200,
        memory_watch: str = "auto", output_bytes: int = 0) -> dict[str, Any]:
    """One production of `jobs` trivial jobs (or, with output_bytes, jobs writing one file
    each, staged and cataloged); returns its rates, CPU and slot gaps."""
    with postgres() as database, vhost() as broker:
        config = home(directory, database, broker, pilots, slots, memory_watch)
        request = directory / "trivial.yaml"
        request.write_text(yaml.safe_dump(production(jobs, output_bytes)))
        env = {**os.environ, "TOWER_CONFIG": str(config)}
        subprocess.run([*TOWER, "submit", str(request)], env=env, check=True,
                       capture_output=True)
        port = yaml.safe_load(config.read_text())["api"]["port"]
        meter = CpuMeter(GRIDTOWER)
        meter.start()
        with open(directory / "api.log", "wb") as api_log:
            api = subprocess.Popen([*TOWER, "serve"], env=env, stdout=api_log,
                                   stderr=subprocess.STDOUT)
        try:
            wait_listening(port)
            started = time.perf_counter()
            subprocess.run([*TOWER, "run", "--no-api", "--until-done", "--timeout",
                            str(timeout)], env=env, check=True, capture_output=True)
            wall = time.perf_counter() - started
        finally:
            api.terminate()
            api.wait(timeout=30)
        cpu = meter.stop()
        result = _read_back(database, jobs)
        if output_bytes:
            result.update(_staged(database, jobs, output_bytes, directory))
        result.update(pilots=pilots, slots=slots, wall_s=wall, wall_rate=jobs / wall, cpu_s=cpu,
                      cpu_per_job_ms={part: 1000 * seconds / jobs
                                      for part, seconds in cpu.items()},
                      **_gaps(database))
        return result


def _read_back(database: str, jobs: int) -> dict[str, Any]:
    """Check every job is done, once; the span from the first claim to the last done."""
    with psycopg.connect(database) as connection:
        done, first, last = connection.execute(
            "select count(*) filter (where state = 'done'), "
            "(select min(at) from jobevent where to_state = 'running'), "
            "(select max(at) from jobevent where to_state = 'done') from job").fetchone()
        succeeded = connection.execute(
            "select count(*) from attempt where outcome = 'success'").fetchone()[0]
    if done != jobs or succeeded != jobs:
        raise RuntimeError(f"{done} of {jobs} jobs done, {succeeded} successful attempts")
    span = (last - first).total_seconds()
    return {"jobs": jobs, "span_s": span, "rate": jobs / span}


def _staged(database: str, jobs: int, output_bytes: int, directory: Path) -> dict[str, Any]:
    """Check the catalog and the destinations hold every output once, whole; the time from
    each job's report to its cataloging (mean, median, p99, in seconds)."""
    with psycopg.connect(database) as connection:
        cataloged, replicas, sizes = connection.execute(
            "select count(distinct f.id), count(r.id), count(*) filter (where f.size <> %s) "
            "from catalog_file f left join replica r on r.file_id = f.id "
            "and r.state = 'good'", (output_bytes,)).fetchone()
        waits = sorted(row[0] for row in connection.execute(
            "select extract(epoch from d.at - s.at) from jobevent s join jobevent d "
            "on d.job_id = s.job_id and d.to_state = 'done' where s.to_state = 'staging'"))
    if (cataloged, replicas, sizes) != (jobs, len(DESTINATIONS) * jobs, 0):
        raise RuntimeError(f"{cataloged} of {jobs} files cataloged with {replicas} good "
                           f"replicas, {sizes} of another size than {output_bytes}")
    for name in DESTINATIONS:
        found = [entry for entry in (directory / name).rglob("*") if entry.is_file()]
        whole = [entry for entry in found if entry.name.startswith("out_")
                 and entry.stat().st_size == output_bytes]
        if len(found) != jobs or len(whole) != jobs:
            raise RuntimeError(f"destination {name}: {len(found)} files, {len(whole)} of "
                               f"them whole outputs, for {jobs} jobs")
    return {"output_bytes": output_bytes, "destinations": len(DESTINATIONS),
            "cataloged": cataloged, "stage_wait_s": _summary([float(w) for w in waits])}


def _summary(values: list[float]) -> dict[str, float]:
    """Mean, median, p99 and max of sorted values."""
    return {"mean": sum(values) / len(values), "median": values[len(values) // 2],
            "p99": values[min(len(values) - 1, int(len(values) * 0.99))], "max": values[-1],
            "n": len(values)}


def _gaps(database: str) -> dict[str, Any]:
    """The slot gaps each pilot logged as it ended: the median of the pilots' medians and
    the largest p99 (each pilot computed its own over all its gaps)."""
    with psycopg.connect(database) as connection:
        paths = [row[0] for row in connection.execute("select log_path from pilot")]
    found = [GAPS.search(Path(path).read_text(errors="replace")) for path in paths if path]
    numbers = [(int(m[1]), float(m[2]), float(m[3]), float(m[4] or "nan"),
                float(m[5] or "nan")) for m in found if m]
    if not numbers:
        return {"gap_median_ms": None, "gap_p99_ms": None, "gap_mean_ms": None,
                "gap_max_ms": None, "gaps": 0}
    by_median = sorted(numbers, key=lambda item: item[1])
    count = sum(item[0] for item in numbers)
    return {"gap_median_ms": by_median[len(by_median) // 2][1],
            "gap_p99_ms": max(item[2] for item in numbers),
            "gap_mean_ms": sum(item[0] * item[3] for item in numbers) / count,
            "gap_max_ms": max(item[4] for item in numbers), "gaps": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--slots", type=int, default=64, help="payload slots per pilot")
    parser.add_argument("--memory-watch", default="auto", choices=WATCHES,
                        help="how the pilots watch their payloads' memory (off: not at all)")
    parser.add_argument("--output-bytes", type=int, default=0,
                        help="the full path: each job writes one file of this size, staged to "
                             "two local destinations and cataloged (0: no output)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args.jobs, args.pilots, args.slots, Path(scratch),
                     memory_watch=args.memory_watch, output_bytes=args.output_bytes)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.jobs} jobs, {args.pilots} pilots x {args.slots} slots: "
          f"{result['rate']:.0f} jobs/s (first claim to last done, {result['span_s']:.1f}s); "
          f"{result['wall_rate']:.0f} jobs/s over the whole run ({result['wall_s']:.1f}s)")
    print("CPU ms per job: " + ", ".join(f"{part} {ms:.2f}"
                                         for part, ms in result["cpu_per_job_ms"].items()))
    print(f"slot gaps: median {result['gap_median_ms']} ms, p99 {result['gap_p99_ms']} ms, "
          f"mean {result['gap_mean_ms']:.2f} ms, max {result['gap_max_ms']} ms "
          f"over {result['gaps']} (memory watch: {args.memory_watch})")
    if args.output_bytes:
        wait = result["stage_wait_s"]
        print(f"report to cataloged: mean {wait['mean']:.2f}s, median {wait['median']:.2f}s, "
              f"p99 {wait['p99']:.2f}s, max {wait['max']:.2f}s over {wait['n']} jobs")


if __name__ == "__main__":
    main()
