#!/usr/bin/env python3
"""A test payload that fails on purpose: with exit code --exit-code on a share of its
attempts (chosen by a hash of job index and attempt, so a run is reproducible), else it
sleeps --sleep seconds and writes one output file. Standard library only."""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--fail-share", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=75)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    draw = int(hashlib.sha256(f"{args.index}:{args.attempt}".encode()).hexdigest()[:8], 16)
    if draw / 2**32 < args.fail_share:
        print(f"flaky: attempt {args.attempt} of job {args.index} fails on purpose "
              f"(exit {args.exit_code})", file=sys.stderr)
        return args.exit_code
    time.sleep(args.sleep)
    path = pathlib.Path(args.output_dir) / f"out_{args.index}.txt"
    path.write_text(f"job {args.index} attempt {args.attempt}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
