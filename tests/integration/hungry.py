#!/usr/bin/env python3
"""A test payload of known size: it stamps when it starts and ends (with the cores it was
given), grows its memory to --allocate-mb in steps and holds it, burns --burn CPU seconds,
and may run a child doing the same with --child-mb / --child-burn; then it writes one
output file. What it used by its own count goes to --stamps too. Standard library only."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

STEP_MB = 10


def grow(megabytes: int, hold: float) -> list[bytes]:
    """Allocate and touch `megabytes` in steps, as a simulation filling its buffers."""
    chunks = []
    for _ in range(megabytes // STEP_MB):
        chunks.append(b"\x01" * (STEP_MB * 2**20))  # filled: every page is touched
        time.sleep(0.02)
    time.sleep(hold)
    return chunks


def burn(seconds: float) -> None:
    """Use the CPU until this process has used `seconds` of it, startup included."""
    while time.process_time() < seconds:
        sum(range(10000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--stamps", required=True)
    parser.add_argument("--cores", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--allocate-mb", type=int, default=0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--burn", type=float, default=0.0)
    parser.add_argument("--child-mb", type=int, default=0)
    parser.add_argument("--child-burn", type=float, default=0.0)
    parser.add_argument("--output-dir")
    args = parser.parse_args()
    stamps = pathlib.Path(args.stamps)
    began = time.time()
    chunks = grow(args.allocate_mb, 0)
    child = None
    if args.child_mb or args.child_burn:
        child = subprocess.Popen([sys.executable, __file__, "--name", f"{args.name}-child",
                                  "--stamps", args.stamps, "--allocate-mb", str(args.child_mb),
                                  "--hold", str(args.hold), "--burn", str(args.child_burn)])
    time.sleep(args.hold + args.sleep)
    burn(args.burn)
    if child is not None:
        child.wait()
    del chunks
    used = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    record = {"start": began, "end": time.time(), "cores": args.cores,
              "GRIDTOWER_CORES": os.environ.get("GRIDTOWER_CORES"),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "cpu": sum(usage.ru_utime + usage.ru_stime for usage in used)}
    (stamps / f"{args.name}.json").write_text(json.dumps(record))
    if args.output_dir:
        (pathlib.Path(args.output_dir) / f"out_{args.name}.txt").write_text(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
