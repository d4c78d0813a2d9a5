"""REPORT.md from the suite's results: medians and spreads, ratios, targets met or not; and
the CLI's answer times that bench/cli.py keeps beside them (cli.json)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Runs = list[dict[str, Any]]


def spread(runs: Runs, pick: Callable[[dict[str, Any]], float | None],
           digits: int = 0) -> str:
    """`median (min-max, n=N)` of a figure over runs."""
    values = [value for value in map(pick, runs) if value is not None]
    if not values:
        return "n/a"
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:,.{digits}f}"
    return f"{middle:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f}, " \
           f"n={len(values)})"


def middle(runs: Runs, pick: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [value for value in map(pick, runs) if value is not None]
    return statistics.median(values) if values else None


def write_report(results: dict[str, Any], path: Path) -> None:
    runs: dict[str, Runs] = results["runs"]
    lines = [
        "# gridtower benchmark report", "",
        f"Run {results['started']} by `make bench` (bench/suite.py) in "
        f"{results['seconds'] / 60:.1f} minutes, on one machine, all systems in the same run. "
        "Figures are medians with (min-max, n=runs).", "",
        *_throughput(runs), *_ceilings(runs), *_gap(runs), *_slurm(runs), *_scale(runs),
        *_targets(runs), *_versions(results), *_cli(path.parent / "cli.json"),
    ]
    path.write_text("\n".join(lines) + "\n")


#: The CLI commands bench/cli.py times, with their targets (wall ms, median).
CLI_TARGETS = {"tower --help": 150.0, "tower status (SQLite, 24 jobs)": 300.0,
               "tower --url URL status": 150.0}


def _cli(path: Path) -> list[str]:
    """The section of bench/cli.py's last run (its cli.json), if it ran."""
    if not path.exists():
        return []
    cli = json.loads(path.read_text())
    lines = ["## CLI answer times: `bench/cli.py` (issue 19)", "",
             f"Run {cli['started']} by bench/cli.py, apart from the suite (its figures are kept "
             "in cli.json and survive `make bench`). Wall milliseconds of a fresh `tower` "
             "process (the console script's `from tower.cli import main`), "
             f"n={cli['repeat']} after one warm-up, on this machine ({cli['cpus']} cores, load "
             f"average {cli['load'][0]} at the start, {cli['load'][1]} at the end); CPU is the "
             "command's own user and system time (median), which a busy machine stretches "
             f"less. BEFORE is commit {cli['before_commit']} (the argparse CLI, extracted with "
             f"`git archive`), AFTER is {cli['after_commit']}.", "",
             "| command | before median | mean | p95 | CPU | after median | mean | p95 | CPU "
             "| target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, target in CLI_TARGETS.items():
        old, new = cli["before"][name], cli["after"][name]
        met = "met" if new["median"] < target else "**missed**"
        lines.append(f"| `{name}` | {old['median']:.0f} | {old['mean']:.0f} | {old['p95']:.0f} "
                     f"| {old['cpu_median']:.0f} | {new['median']:.0f} | {new['mean']:.0f} "
                     f"| {new['p95']:.0f} | {new['cpu_median']:.0f} | < {target:.0f}: {met} |")
    return [*lines, "", "`--help` and remote commands load neither SQLAlchemy, the models, "
            "pydantic nor requests; a local `tower status` loads the configuration (pydantic) "
            "and reads the database in plain SQL through its driver (tower/model/reads.py), "
            "without SQLAlchemy.", ""]


def _throughput(runs: Runs | Any) -> list[str]:
    tower, celery, parsl = runs["gridtower"], runs["celery"], runs["parsl"]
    jobs = tower[0]["jobs"]
    ours = middle(tower, lambda r: r["rate"]) or 0.0
    lines = [f"## Durable throughput: {jobs:,} jobs, each `/bin/true` as a subprocess", "",
             "| system | jobs/s | CPU ms per job | gridtower / it |", "|---|---|---|---|",
             f"| gridtower: PostgreSQL, RabbitMQ, 2 local pilots x "
             f"{tower[0].get('slots', '?')} slots (first claim to last done) "
             f"| {spread(tower, lambda r: r['rate'])} "
             f"| {_cpu(tower)} | 1.00 |",
             f"| gridtower, whole run (tower start to pilots' goodbye) "
             f"| {spread(tower, lambda r: r['wall_rate'])} | | |"]
    for name, peer in (("Celery 5: RabbitMQ broker, PostgreSQL results, prefork worker "
                        "(concurrency 2)", celery),
                       ("Parsl HighThroughputExecutor, 2 workers, bash_app", parsl)):
        theirs = middle(peer, lambda r: r["rate"]) or 1.0
        cpu = ", ".join(f"{part} {ms:.2f}" for part, ms in _per_job(peer).items())
        lines.append(f"| {name} | {spread(peer, lambda r: r['rate'])} | {cpu} "
                     f"| **{ours / theirs:.2f}** |")
    lines += ["", "CPU of gridtower's parts is read from /proc while the run goes (bench/cpu.py): "
              "`tower` is the loops (`tower run --no-api`), `api` is `tower serve`, `pilots` "
              "includes the payloads they reaped. PostgreSQL and RabbitMQ are the servers' "
              "whole CPU. The peers' CPU covers their client and workers (the payloads "
              "included); their servers' CPU is left out.", ""]
    return lines


def _per_job(runs: Runs) -> dict[str, float]:
    parts: dict[str, list[float]] = {}
    for run in runs:
        jobs = run["jobs"]
        for part, seconds in run["cpu_seconds"].items():
            parts.setdefault(part, []).append(1000 * seconds / jobs)
    return {part: statistics.median(values) for part, values in parts.items()}


def _cpu(runs: Runs) -> str:
    per_job = _per_job([{"jobs": r["jobs"], "cpu_seconds": r["cpu_s"]} for r in runs])
    return ", ".join(f"{part} {ms:.2f}" for part, ms in per_job.items())


def _ceilings(runs: Any) -> list[str]:
    spawn, pika = runs["spawn"], runs["pika"]
    return [
        "## Ceilings of this machine", "",
        "| what | per second |", "|---|---|",
        f"| `/bin/true` spawns, one thread | {spread(spawn, lambda r: r['rates']['serial'])} |",
        f"| `/bin/true` spawns, two threads | "
        f"{spread(spawn, lambda r: r['rates']['threads2'])} |",
        f"| pika: persistent publishes, pipelined confirms | "
        f"{spread(pika, lambda r: r['rates']['publish_async_confirms'])} |",
        f"| pika: persistent publishes, waiting for each confirm | "
        f"{spread(pika, lambda r: r['rates']['publish_confirm_each'])} |",
        f"| pika: consume with prefetch 50, ack each | "
        f"{spread(pika, lambda r: r['rates']['consume_prefetch50_ack'])} |", ""]


def _gap(runs: Any) -> list[str]:
    tower, single = runs["gridtower"], runs["one slot"]
    return [
        "## Per-job gap inside a pilot", "",
        "From a payload's end to the start of the next payload in its slot, as each pilot "
        "measures it (pilots/efficiency.py) and logs it when it ends.", "",
        "| pilots | gaps | median ms | p99 ms |", "|---|---|---|---|",
        f"| the throughput runs (2 pilots x {tower[0].get('slots', '?')} slots) "
        f"| {spread(tower, lambda r: r['gaps'])} "
        f"| {spread(tower, lambda r: r['gap_median_ms'], 2)} "
        f"| {spread(tower, lambda r: r['gap_p99_ms'], 2)} |",
        f"| one pilot of one slot, {single[0]['jobs']:,} jobs "
        f"| {spread(single, lambda r: r['gaps'])} "
        f"| {spread(single, lambda r: r['gap_median_ms'], 2)} "
        f"| {spread(single, lambda r: r['gap_p99_ms'], 2)} |", ""]


def _slurm(runs: Any) -> list[str]:
    [result] = runs["slurm"]
    makespans = result["makespans_s"]
    sbatch = statistics.median(makespans["sbatch per job"])
    pilots = statistics.median(makespans["pilots"])
    return [
        f"## Pilots versus one `sbatch` per job: {result['jobs']} jobs of "
        f"`{result['command']}`", "",
        f"{result['slurm']}, one node, {result['layout']}.", "",
        "| way | makespan s |", "|---|---|",
        *(f"| {way} | {spread([{'t': t} for t in times], lambda r: r['t'], 1)} |"
          for way, times in makespans.items()),
        "", f"Pilots are **{sbatch / pilots:.1f}x** faster than one sbatch per job "
        "(makespan from the first submission to the last job's end).", ""]


def _scale(runs: Any) -> list[str]:
    [result] = runs["scale"]
    lines = [f"## Scale: one production of {result['jobs']:,} jobs in PostgreSQL", "",
             f"- `tower submit`: {result['submit_s']:.1f} s, peak memory "
             f"{result['submit_peak_mib']:.0f} MiB; a raw COPY of the same rows into a "
             f"scratch database of the same schema, in the same run: "
             f"{result['copy_s']:.1f} s (**{result['submit_ratio']:.2f}x**).",
             f"- Broker loop: {result['drained']:,} jobs matched, published with confirms "
             f"and recorded as queued in {result['drain_s']:.1f} s = "
             f"**{result['drain_rate']:,.0f} jobs/s** ({result['drain_cycles']} cycles).", "",
             "| read, with the million jobs | median ms | p95 ms |", "|---|---|---|"]
    lines += [f"| {what} | {numbers['median_ms']:.1f} | {numbers['p95_ms']:.1f} |"
              for what, numbers in result["reads"].items()]
    return [*lines, ""]


def _targets(runs: Any) -> list[str]:
    ours = middle(runs["gridtower"], lambda r: r["rate"]) or 0.0
    celery = middle(runs["celery"], lambda r: r["rate"]) or 1.0
    parsl = middle(runs["parsl"], lambda r: r["rate"]) or 1.0
    gap = middle(runs["one slot"], lambda r: r["gap_median_ms"])
    makespans = runs["slurm"][0]["makespans_s"]
    faster = statistics.median(makespans["sbatch per job"]) / statistics.median(
        makespans["pilots"])
    scale = runs["scale"][0]
    reads = scale["reads"]
    slowest = max(reads[name]["median_ms"] for name in reads
                  if name != "tower status (command)")
    rows = [
        ("durable throughput >= 2x Celery with PostgreSQL", f"{ours / celery:.2f}x",
         ours >= 2 * celery),
        ("durable throughput >= Parsl HTEX", f"{ours / parsl:.2f}x", ours >= parsl),
        ("per-job gap in a pilot (one slot): median < 5 ms",
         f"{gap:.2f} ms" if gap is not None else "n/a", gap is not None and gap < 5),
        ("pilots >= 20x faster than sbatch per job", f"{faster:.1f}x", faster >= 20),
        ("1,000,000-job submission < 1.3x a raw COPY of the same rows",
         f"{scale['submit_ratio']:.2f}x ({scale['submit_s']:.1f} s)",
         scale["submit_ratio"] < 1.3),
        ("... with < 1 GiB peak memory", f"{scale['submit_peak_mib']:.0f} MiB",
         scale["submit_peak_mib"] < 1024),
        ("status and production pages < 300 ms (in process)", f"{slowest:.0f} ms",
         slowest < 300),
    ]
    return ["## Targets", "", "| target | measured | met |", "|---|---|---|",
            *(f"| {name} | {value} | {'yes' if met else '**no**'} |"
              for name, value, met in rows), ""]


def _versions(results: dict[str, Any]) -> list[str]:
    lines = ["## Versions", "", "| what | version |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in results["versions"].items()]
    peers: dict[str, str] = {}
    for kind in ("celery", "parsl", "pika"):
        for run in results["runs"].get(kind, []):
            peers.update(run.get("versions", {}))
    lines += [f"| peer: {name} | {value} |" for name, value in sorted(peers.items())]
    settings = ", ".join(f"{key}={value}" for key, value in results["settings"].items())
    return [*lines, "", f"Suite settings: {settings}.", ""]
