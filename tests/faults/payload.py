"""The fault suite's payload: sleeps a seeded random time, writes outputs of seeded random
sizes and exits with a seeded random code (standard library only: pilots run it).

Every draw comes from `Random(f"{seed}:{attempt}")`, so a job's attempts differ but a run
is reproduced by its seed. The profile is JSON: `sleep` [min, max] seconds, `long`
[fraction, min, max] (a few slow payloads), `codes` {exit code: weight}, `files` [min, max]
outputs, `size` [min, max] bytes each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--job", required=True, help="the job's index, to name outputs")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--profile", required=True)
    args = parser.parse_args()
    profile = json.loads(args.profile)
    rng = random.Random(f"{args.seed}:{args.attempt}")
    fraction, *slow = profile.get("long", [0, 0, 0])
    seconds = rng.uniform(*slow) if rng.random() < fraction else rng.uniform(*profile["sleep"])
    codes = profile["codes"]
    code = int(rng.choices(list(codes), weights=list(codes.values()))[0])
    files = rng.randint(*profile["files"])
    sizes = [rng.randint(*profile["size"]) for _ in range(files)]
    time.sleep(seconds)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for number, size in enumerate(sizes):
        with open(args.output_dir / f"out_{args.job}_{number}.dat", "wb") as out:
            out.write(os.urandom(size))
    print(f"slept {seconds:.2f}s, wrote {sizes}, exit {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
