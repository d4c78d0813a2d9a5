"""What the pilot's polling memory watch costs: one read of /proc for K payload trees.

    .venv/bin/python bench/meter.py [--payloads 1 4 16 64] [--samples 200] [--json]

Starts K sleeping payloads, each a session of a shell with one child (as a payload that
runs its program under a wrapper), and times `PollingMeter.sample()` — which reads every
process of the machine once, adds each tree up and checks its limit — over --samples
calls. Its CPU per second of a pilot is the sample's CPU time over the meter's period
(pilots.meter.POLL). Mean, median, p99 and max, in ms. Also what watching costs each
payload on its own: a `start` and a `stop`, in µs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilots.meter import POLL, PollingMeter  # noqa: E402


def measure(payloads: int, samples: int) -> dict[str, Any]:
    processes = [subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
                 for _ in range(payloads)]
    meter = PollingMeter(period=3600)  # its own thread stays idle: the samples are ours
    try:
        for number, process in enumerate(processes):
            meter.start((number, 1), process.pid, 10_000)
        time.sleep(0.2)  # the shells have started their children
        machine = sum(1 for name in os.listdir("/proc") if name.isdigit())
        cpu: list[float] = []
        for _ in range(samples):
            began = time.process_time()
            meter.sample()
            cpu.append(1000 * (time.process_time() - began))
    finally:
        meter.close()
        for process in processes:
            os.killpg(process.pid, 9)
            process.wait()
    cpu.sort()
    return {"payloads": payloads, "processes": machine,
            "mean_ms": statistics.fmean(cpu), "median_ms": statistics.median(cpu),
            "p99_ms": cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))], "max_ms": cpu[-1],
            "cpu_share": statistics.fmean(cpu) / 1000 / POLL}


def per_payload(count: int = 20000) -> dict[str, float]:
    """Wall µs of one `start` + `stop` (the pilot pays them between a payload's end and
    the next start in its slot)."""
    meter = PollingMeter(period=3600)
    times = []
    try:
        for number in range(count):
            began = time.perf_counter()
            meter.start((number, 1), os.getpid(), None)
            meter.stop((number, 1))
            times.append(1e6 * (time.perf_counter() - began))
    finally:
        meter.close()
    times.sort()
    return {"mean_us": statistics.fmean(times), "median_us": statistics.median(times),
            "p99_us": times[int(len(times) * 0.99)], "max_us": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(count, args.samples) for count in args.payloads]
    pair = per_payload()
    if args.json:
        print(json.dumps({"reads": results, "start_stop": pair}, indent=2))
        return
    print(f"one read of /proc every {POLL}s; CPU ms per read:")
    for row in results:
        print(f"{row['payloads']:>4} payloads ({row['processes']} processes on the machine): "
              f"mean {row['mean_ms']:.2f}, median {row['median_ms']:.2f}, "
              f"p99 {row['p99_ms']:.2f}, max {row['max_ms']:.2f}; "
              f"{100 * row['cpu_share']:.2f}% of a core")
    print(f"start + stop per payload: mean {pair['mean_us']:.1f} µs, median "
          f"{pair['median_us']:.1f}, p99 {pair['p99_us']:.1f}, max {pair['max_us']:.0f}")


if __name__ == "__main__":
    main()
