#!/usr/bin/env python3
"""Toy reconstruction: a summary of each toy simulation CSV (the second step of a chain).

Reads the deposit CSVs that `toysim.py` wrote (the files its steering names) and
writes one JSON summary: events, deposits, and the visible energy per particle.
Standard library only.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def summarize(paths: list[str]) -> dict[str, object]:
    """Events, deposits and energy (keV) per particle over the CSVs at `paths`."""
    events: set[tuple[str, str]] = set()
    deposits = 0
    energy: dict[str, float] = defaultdict(float)
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                events.add((path, row["event"]))
                deposits += 1
                energy[row["particle"]] += float(row["energy_kev"])
    return {"inputs": [Path(path).name for path in paths], "events": len(events),
            "deposits": deposits,
            "energy_kev": {particle: round(total, 3) for particle, total in sorted(energy.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steering", required=True,
                        help='JSON: {"inputs": [CSV paths], "output": "summary.json"}')
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    steering = json.loads(Path(args.steering).read_text())
    if not steering["inputs"]:
        print("toyreco: no input files", file=sys.stderr)
        return 2
    summary = summarize(steering["inputs"])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # written whole, then renamed: a killed job leaves no half summary
    fd, temporary = tempfile.mkstemp(dir=out, prefix=".summary-")
    with os.fdopen(fd, "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    os.replace(temporary, out / steering["output"])
    print(f"toyreco: {summary['events']} events, {summary['deposits']} deposits "
          f"from {len(steering['inputs'])} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
