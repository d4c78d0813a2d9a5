"""How fast `tower` answers: `tower --help`, a local `tower status` (SQLite, 24 jobs) and a
remote `tower --url URL status` against a running `tower serve`, before and after the
CLI moved to click with its imports inside the commands.

    .venv/bin/python bench/cli.py [--repeat 20] [--before 5666c5e] [--json]

Each tree (BEFORE: commit --before, extracted with `git archive` into a temporary
directory; AFTER: this checkout) gets its own home from its own `tower init`, with the
starter production (24 jobs) submitted, and its own `tower serve`. Each command runs as
the console script does (`from tower.cli import main`), in a fresh interpreter, with
PYTHONPATH pointing at the tree; one warm-up run, then --repeat timed runs. Prints median,
mean and p95 wall milliseconds. Targets: 150 ms for --help and remote, 300 ms for status.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The console script, `tower = "tower.cli:main"`, as an interpreter command line.
TOWER = [sys.executable, "-c", "import sys; from tower.cli import main; sys.exit(main())"]
TARGETS = {"tower --help": 150.0, "tower status (SQLite, 24 jobs)": 300.0,
           "tower --url URL status": 150.0}


def environment(tree: Path) -> dict[str, str]:
    # with cwd=tree too: `python -c` puts the working directory first on sys.path
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("TOWER_", "PYTHONPATH", "REQUESTS_CA"))}
    return {**clean, "PYTHONPATH": str(tree)}


def extract(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextmanager
def served(tree: Path, config: Path) -> Iterator[str]:
    """`tower serve` of this tree; yields its API's URL."""
    process = subprocess.Popen([*TOWER, "--config", str(config), "serve"], text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=environment(tree), cwd=tree)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "API at" in line:
                yield line.split("API at ", 1)[1].strip()
                return
        raise SystemExit(f"tower serve of {tree} ended without serving")
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed(tree: Path, args: list[str], repeat: int) -> list[float]:
    """Wall milliseconds of `tower ARGS` in a fresh interpreter, `repeat` times."""
    runs = []
    for turn in range(repeat + 1):
        started = time.perf_counter()
        result = subprocess.run([*TOWER, *args], capture_output=True, text=True,
                                env=environment(tree), cwd=tree, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0:
            raise SystemExit(f"tower {' '.join(args)} ({tree}) failed:\n{result.stderr}")
        if turn:  # the first run warms the page cache
            runs.append(elapsed)
    return runs


def measure(tree: Path, scratch: Path, repeat: int) -> dict[str, list[float]]:
    home = scratch / "home"
    made = subprocess.run([*TOWER, "init", str(home)], capture_output=True, text=True,
                          env=environment(tree), cwd=tree, check=True)
    config, request = home / "tower.yaml", home / "production.yaml"
    assert config.exists() and request.exists(), made.stdout
    subprocess.run([*TOWER, "--config", str(config), "submit", str(request)], check=True,
                   capture_output=True, env=environment(tree), cwd=tree)
    listed = subprocess.run([*TOWER, "--config", str(config), "status", "--json"], check=True,
                            capture_output=True, text=True, env=environment(tree), cwd=tree)
    jobs = json.loads(listed.stdout)["productions"][0]["jobs"]
    assert jobs == 24, jobs
    results = {"tower --help": timed(tree, ["--help"], repeat),
               "tower status (SQLite, 24 jobs)": timed(tree, ["--config", str(config),
                                                              "status"], repeat)}
    with served(tree, config) as url:
        results["tower --url URL status"] = timed(tree, ["--url", url, "status"], repeat)
    return results


def summary(runs: list[float]) -> dict[str, float]:
    ordered = sorted(runs)
    return {"median": statistics.median(runs), "mean": statistics.fmean(runs),
            "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "n": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--before", default="5666c5e", help="the commit to compare with")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as directory:
        scratch = Path(directory)
        for name in ("before-tree", "before", "after"):
            (scratch / name).mkdir()
        before = extract(args.before, scratch / "before-tree")
        results = {"before": {name: summary(runs) for name, runs in
                              measure(before, scratch / "before", args.repeat).items()},
                   "after": {name: summary(runs) for name, runs in
                             measure(ROOT, scratch / "after", args.repeat).items()}}
    if args.json:
        print(json.dumps({"before_commit": args.before, **results}, indent=2))
        return
    print(f"{'command':<32} {'before median':>13} {'mean':>7} {'p95':>7}   "
          f"{'after median':>12} {'mean':>7} {'p95':>7}  target")
    for name, target in TARGETS.items():
        old, new = results["before"][name], results["after"][name]
        met = "met" if new["median"] < target else "MISSED"
        print(f"{name:<32} {old['median']:>13.0f} {old['mean']:>7.0f} {old['p95']:>7.0f}   "
              f"{new['median']:>12.0f} {new['mean']:>7.0f} {new['p95']:>7.0f}  "
              f"<{target:.0f} ms {met}")
    print(f"(wall ms, n={args.repeat} each; before = {args.before})")


if __name__ == "__main__":
    main()
