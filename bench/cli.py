"""How fast `tower` answers: `tower --help`, a local `tower status` (SQLite, 24 jobs) and a
remote `tower --url URL status` against a running `tower serve`, before and after the
CLI moved to click with its imports inside the commands.

    .venv/bin/python bench/cli.py [--repeat 20] [--before 5666c5e] [--json] [--out bench/results]

Each tree (BEFORE: commit --before, extracted with `git archive` into a temporary
directory; AFTER: this checkout) gets its own home from its own `tower init`, with the
starter production (24 jobs) submitted, and its own `tower serve`. Each command runs as
the console script does (`from tower.cli import main`), in a fresh interpreter, with
PYTHONPATH pointing at the tree; one warm-up run, then --repeat timed runs. Prints median,
mean and p95 wall milliseconds. Targets: 150 ms for --help and remote, 300 ms for status.

The figures go to OUT/cli.json, and REPORT.md there is written again from the suite's last
results (results.json) with them as its CLI section: `make bench` (bench/suite.py) keeps
that section, read from cli.json, when it writes the report anew.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import CLI_TARGETS as TARGETS  # noqa: E402
from bench.report import write_report  # noqa: E402

#: The console script, `tower = "tower.cli:main"`, as an interpreter command line.
TOWER = [sys.executable, "-c", "import sys; from tower.cli import main; sys.exit(main())"]


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


def timed(tree: Path, args: list[str], repeat: int) -> list[tuple[float, float]]:
    """(wall, CPU) milliseconds of `tower ARGS` in a fresh interpreter, `repeat` times. The
    CPU (user and system) tells the command's own cost apart from a busy machine's waits."""
    runs = []
    for turn in range(repeat + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run([*TOWER, *args], capture_output=True, text=True,
                                env=environment(tree), cwd=tree, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = 1000 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            raise SystemExit(f"tower {' '.join(args)} ({tree}) failed:\n{result.stderr}")
        if turn:  # the first run warms the page cache
            runs.append((elapsed, cpu))
    return runs


def measure(tree: Path, scratch: Path, repeat: int) -> dict[str, list[tuple[float, float]]]:
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


def summary(runs: list[tuple[float, float]]) -> dict[str, float]:
    walls = sorted(wall for wall, _ in runs)
    return {"median": statistics.median(walls), "mean": statistics.fmean(walls),
            "p95": walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))],
            "cpu_median": statistics.median(cpu for _, cpu in runs), "n": len(runs)}


def keep(record: dict[str, object], out: Path) -> None:
    """OUT/cli.json, and OUT/REPORT.md written again with it (from the suite's results)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli.json").write_text(json.dumps(record, indent=2) + "\n")
    suite = out / "results.json"
    if suite.exists():
        write_report(json.loads(suite.read_text()), out / "REPORT.md")
    else:
        print(f"{suite}: no suite results yet; `make bench` writes REPORT.md with the CLI "
              "section from cli.json", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--before", default="5666c5e", help="the commit to compare with")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where cli.json and REPORT.md go")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = round(os.getloadavg()[0], 2)  # other work on the machine stretches wall times
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as directory:
        scratch = Path(directory)
        for name in ("before-tree", "before", "after"):
            (scratch / name).mkdir()
        before = extract(args.before, scratch / "before-tree")
        results = {"before": {name: summary(runs) for name, runs in
                              measure(before, scratch / "before", args.repeat).items()},
                   "after": {name: summary(runs) for name, runs in
                             measure(ROOT, scratch / "after", args.repeat).items()}}
    record = {"started": started, "repeat": args.repeat, "cpus": os.cpu_count(),
              "load": [load, round(os.getloadavg()[0], 2)],
              "before_commit": args.before, "after_commit": subprocess.run(
                  ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                  capture_output=True, text=True).stdout.strip(), **results}
    keep(record, args.out)
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"{'command':<32} {'before median':>13} {'mean':>7} {'p95':>7} {'CPU':>5}   "
          f"{'after median':>12} {'mean':>7} {'p95':>7} {'CPU':>5}  target")
    for name, target in TARGETS.items():
        old, new = results["before"][name], results["after"][name]
        met = "met" if new["median"] < target else "MISSED"
        print(f"{name:<32} {old['median']:>13.0f} {old['mean']:>7.0f} {old['p95']:>7.0f} "
              f"{old['cpu_median']:>5.0f}   {new['median']:>12.0f} {new['mean']:>7.0f} "
              f"{new['p95']:>7.0f} {new['cpu_median']:>5.0f}  <{target:.0f} ms {met}")
    print(f"(wall ms, n={args.repeat} each; CPU: median user+system ms; load average "
          f"{record['load'][0]} -> {record['load'][1]}; before = {args.before})")


if __name__ == "__main__":
    main()
