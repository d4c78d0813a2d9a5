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
    """`median (min-max, mean M, n=N)` of a figure over runs."""
    return summary([value for value in map(pick, runs) if value is not None], digits)


def summary(values: list[float], digits: int = 0, unit: str = "") -> str:
    """`median (min-max, mean M, n=N)` of values, each followed by `unit`; one value alone."""
    if not values:
        return "n/a"
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:,.{digits}f}{unit}"
    return f"{middle:,.{digits}f}{unit} ({min(values):,.{digits}f}-" \
           f"{max(values):,.{digits}f}{unit}, mean {statistics.fmean(values):,.{digits}f}, " \
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
        "Figures are medians with (min-max, mean, n=runs).", "",
        *_targets(runs), *_failures(results),
        *_when(runs, _throughput, "gridtower", "celery", "parsl"), *_full_path(runs),
        *_when(runs, _ceilings, "spawn", "pika"), *_when(runs, _gap, "gridtower", "one slot"),
        *_when(runs, _slurm, "slurm"), *_settle(runs), *_when(runs, _scale, "scale"),
        *_when(runs, _swarm, "swarm"),
        *_versions(results), *_cli(path.parent / "cli.json"),
    ]
    path.write_text("\n".join(lines) + "\n")


def _when(runs: dict[str, Runs], section: Callable[[Any], list[str]], *kinds: str
          ) -> list[str]:
    """A section of the report, left out when a figure it needs was not measured."""
    return section(runs) if all(runs.get(kind) for kind in kinds) else []


def _failures(results: dict[str, Any]) -> list[str]:
    failures = results.get("failures", {})
    if not failures:
        return []
    return ["## Steps that failed", "", *(f"- {kind}: {error}" for kind, errors in
                                          failures.items() for error in errors), ""]


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
        "| pilots | gaps | median ms | mean ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        *(f"| {label} | {spread(runs, lambda r: r['gaps'])} "
          f"| {spread(runs, lambda r: r['gap_median_ms'], 2)} "
          f"| {spread(runs, lambda r: r.get('gap_mean_ms'), 2)} "
          f"| {spread(runs, lambda r: r['gap_p99_ms'], 2)} "
          f"| {spread(runs, lambda r: r.get('gap_max_ms'), 2)} |"
          for label, runs in ((f"the throughput runs (2 pilots x "
                               f"{tower[0].get('slots', '?')} slots)", tower),
                              (f"one pilot of one slot, {single[0]['jobs']:,} jobs", single))),
        "", f"The pilot of one slot ran {single[0]['jobs']:,} jobs at "
        f"{spread(single, lambda r: r['rate'])} jobs/s, first claim to last done: "
        f"{spread(single, lambda r: 1000 * r['span_s'] / r['jobs'], 1)} ms a job on average, "
        "payload included (the mean gap counts, not only the median).", ""]


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
        "(makespan from the first submission to the last job's end)"
        + (f"; their makespan is **{pilots / statistics.median(loop):.2f}x** that of one batch "
           "job running the same commands in a bare shell loop (from its sbatch to its "
           "script's last line)." if (loop := makespans.get("one batch job, bare loop"))
           else "."), ""]


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
             "| read, with the million jobs | median ms | p95 ms | max ms |",
             "|---|---|---|---|"]
    lines += [f"| {what} | {numbers['median_ms']:.1f} | {numbers['p95_ms']:.1f} "
              f"| {numbers['max_ms']:.1f} |" for what, numbers in result["reads"].items()]
    return [*lines, "", "bench/pages.py times each read --repeat times after a warm-up "
            "and keeps median, p95 and max (no mean).", ""]


def _rates(runs: Any, kind: str) -> list[float]:
    return [run["rate"] for run in runs.get(kind, [])]


def _ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """Run by run when both ran as often (interleaved), else the ratio of the medians."""
    if not ours or not theirs:
        return []
    if len(ours) == len(theirs):
        return [a / b for a, b in zip(ours, theirs, strict=True)]
    return [statistics.median(ours) / statistics.median(theirs)]


def _dig(runs: Any, *keys: Any) -> Any:
    """runs[key][key]..., or None where a key is missing (a figure not measured)."""
    value = runs
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _pages_p95(runs: Any) -> list[float]:
    """The slowest page's p95 at a million jobs: from bench/pages.py's run in the suite
    (runs["pages"][0]["requests"]) if it ran, else from the scale run's reads."""
    reads = _dig(runs, "pages", 0, "requests") or _dig(runs, "scale", 0, "reads") or {}
    slowest = [numbers["p95_ms"] for name, numbers in reads.items() if name.startswith("page ")]
    return [max(slowest)] if slowest else []


def _swarm(runs: Any) -> list[str]:
    """The swarm's levels (bench/swarm.py), if the suite ran it, with its plot beside."""
    if not runs.get("swarm"):
        return []
    [result] = runs["swarm"]
    lines = [f"## Swarm: simulated pilots of {result['slots']} slots against one tower", "",
             f"bench/swarm.py: {result['apis']} API and {result['loops']} loop process(es), "
             f"PostgreSQL, RabbitMQ, HTTPS; {result['workers']} swarm processes; heartbeat "
             f"every {result['heartbeat_s']:.0f} s; payloads "
             + (f"of {result['payload_seconds']:.0f} s" if result["payload_seconds"]
                else "instant")
             + f"; {result['seconds']:.0f} s measured per level after its ramp (registrations: "
             "during the ramp). Latency in ms on the connection, p50 / p99 (n). CPU of the "
             "tower (API, loops, its PostgreSQL backends) per pilot per minute. The curves: "
             "[swarm.svg](swarm.svg).", "",
             "| pilots | requests/s | jobs/s | register | heartbeat | claim | report "
             "| tower CPU ms per pilot-minute | cores busy (machine) | saturation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for level in result["levels"]:
        calls = " | ".join(_latency(level["ramp_calls" if call == "register" else "calls"][call])
                           for call in ("register", "heartbeat", "claim", "report"))
        lines.append(f"| {level['pilots']:,} ({level['registered']:,} registered) "
                     f"| {level['requests_per_s']:,.0f} | {level['jobs_per_s']:,.0f} | {calls} "
                     f"| {level['tower_cpu_ms_per_pilot_minute']:.1f} "
                     f"| {level['machine_busy_cores']:.2f} | {level['saturation']} |")
    growth, costs = result["database"], result.get("calibration")
    if costs:
        beat, empty = costs["heartbeat"], costs["heartbeat_empty"]
        lines += ["", f"Calibration, one call at a time ({costs['pilots']} pilots): a heartbeat "
                  f"with {costs['jobs_per_heartbeat']:g} jobs costs the tower "
                  f"{beat['tower_cpu_ms']:.1f} ms of CPU (API {beat['cpu_ms']['api']:.1f}, "
                  f"PostgreSQL {beat['cpu_ms']['postgresql']:.1f}), an empty one "
                  f"{empty['tower_cpu_ms']:.1f} ms (API {empty['cpu_ms']['api']:.1f}, "
                  f"PostgreSQL {empty['cpu_ms']['postgresql']:.1f})."]
    return [*lines, "", f"Database growth: {growth['gb_per_million_jobs']:.2f} GB per million "
            f"jobs submitted and run ({growth['submit_bytes_per_job']['database']:,} bytes a "
            "job at submission, "
            + (f"{growth['run_bytes_per_job']['database']:,} more as it runs"
               if growth["run_bytes_per_job"] else "none ran")
            + f"; {result['jobs_done']:,} jobs done). The scale model built on these figures "
            "is docs/scaling.md.", ""]


def _latency(call: dict[str, Any]) -> str:
    if not call["n"]:
        return "-"
    return f"{call['p50_ms']:.0f} / {call['p99_ms']:.0f} ({call['n']:,})"


def _targets(runs: Any) -> list[str]:
    """Issue 25's targets, each measured in this run, or "not measured"."""
    tower = _rates(runs, "gridtower")
    single = runs.get("one slot", [])
    spawn = [run["rates"]["threads2"] for run in runs.get("spawn", [])]
    scale = _dig(runs, "scale", 0) or {}
    raw_copy = scale.get("copy_s")
    makespans = _dig(runs, "slurm", 0, "makespans_s") or {}
    at_least, below = (lambda limit: lambda v: v >= limit), (lambda limit: lambda v: v < limit)
    rows: list[tuple[str, str, list[float], Callable[[float], bool], str, int]] = [
        ("durable throughput vs Celery with PostgreSQL", ">= 2.5x",
         _ratios(tower, _rates(runs, "celery")), at_least(2.5), "x", 2),
        ("durable throughput vs Parsl HTEX", ">= 2x",
         _ratios(tower, _rates(runs, "parsl")), at_least(2.0), "x", 2),
        ("gridtower jobs/s as a share of the two-thread spawn ceiling", ">= 50%",
         [100 * rate for rate in _ratios(tower, spawn)], at_least(50), "%", 0),
        ("one pilot of one slot, 1,000 `/bin/true` jobs, first claim to last done",
         ">= 250 jobs/s", _rates(runs, "one slot"), at_least(250), " jobs/s", 0),
        ("... its slot gap, p99", "< 20 ms", [run["gap_p99_ms"] for run in single
                                              if run.get("gap_p99_ms") is not None],
         below(20), " ms", 1),
        ("... its slot gap, median", "< 2 ms", [run["gap_median_ms"] for run in single
                                                if run.get("gap_median_ms") is not None],
         below(2), " ms", 2),
        ("broker loop: jobs/s matched, published with confirms, recorded (bench/loop.py: "
         "rounds of 20,000 of 100,000 jobs, batch_size 5,000)", ">= 10,000",
         [rate for run in runs.get("loop", []) for rate in run["rates"]], at_least(10_000),
         " jobs/s", 0),
        ("... draining a 1,000,000-job production (bench/scale.py, default batch_size "
         "2,000)", ">= 10,000", [scale["drain_rate"]] if "drain_rate" in scale else [],
         at_least(10_000), " jobs/s", 0),
        ("1,000,000-job submit, as a multiple of a raw COPY of the same rows", "< 1.3x",
         [scale["submit_s"] / raw_copy] if raw_copy else [], below(1.3), "x", 2),
        ("pages at 1M jobs, p95 of the slowest page", "< 100 ms", _pages_p95(runs),
         below(100), " ms", 0),
        ("lost attempts settled per second (2,000 at once, PostgreSQL)", ">= 5,000/s",
         _rates(runs, "settle"), at_least(5000), "/s", 0),
        ("the full path (one 100 kB output per job, two local destinations, cataloged), "
         "as a share of the no-output jobs/s", ">= 50%",
         [100 * rate for rate in _ratios(_rates(runs, "full path"), tower)],
         at_least(50), "%", 0),
        ("pilots' makespan, as a multiple of a bare shell loop in one batch job "
         "(200 short jobs, SLURM)", "<= 1.5x",
         _ratios(makespans.get("pilots", []), makespans.get("one batch job, bare loop", [])),
         lambda v: v <= 1.5, "x", 2),
    ]
    lines = ["## Targets (issue 25)", "",
             "Each figure from this run: median (min-max, mean, n). A ratio of two systems is "
             "taken run by run when both ran as often (interleaved), else of their medians "
             "(n=1). Met or not is judged on the median.", "",
             "| figure | target | measured | met? |", "|---|---|---|---|"]
    for figure, target, values, met, unit, digits in rows:
        if not values:
            lines.append(f"| {figure} | {target} | not measured | - |")
            continue
        verdict = "yes" if met(statistics.median(values)) else "**no**"
        lines.append(f"| {figure} | {target} | {summary(values, digits, unit)} | {verdict} |")
    return [*lines, "", *_earlier_targets(runs, makespans, scale), ""]


def _earlier_targets(runs: Any, makespans: dict[str, list[float]],
                     scale: dict[str, Any]) -> list[str]:
    """The targets of earlier issues that issue 25 did not replace."""
    rows = []
    if makespans.get("pilots") and makespans.get("sbatch per job"):
        faster = statistics.median(makespans["sbatch per job"]) / statistics.median(
            makespans["pilots"])
        rows.append(("pilots >= 20x faster than sbatch per job", f"{faster:.1f}x",
                     faster >= 20))
    if "submit_s" in scale:
        rows += [("1,000,000-job submission < 60 s", f"{scale['submit_s']:.1f} s",
                  scale["submit_s"] < 60),
                 ("... its peak memory < 1 GiB", f"{scale['submit_peak_mib']:.0f} MiB",
                  scale["submit_peak_mib"] < 1024)]
    if not rows:
        return []
    return ["Earlier targets:", "", "| target | measured | met |", "|---|---|---|",
            *(f"| {name} | {value} | {'yes' if met else '**no**'} |"
              for name, value, met in rows)]


def _full_path(runs: Any) -> list[str]:
    full = runs.get("full path")
    if not full:
        return []
    first = full[0]
    kb = first["output_bytes"] / 1000
    waits = [run["stage_wait_s"] for run in full]
    share = [100 * v for v in _ratios(_rates(runs, "full path"), _rates(runs, "gridtower"))]
    lines = [f"## The full path: {first['jobs']:,} jobs each writing one {kb:,.0f} kB output, "
             f"staged to {first['destinations']} local destinations and cataloged", "",
             f"The same tower, pilots ({first['pilots']} x {first['slots']} slots) and "
             "payload spawn count as the no-output run (each job is one `dd` writing its "
             "file); the rate counts from the first claim to the last job done, which is "
             "its file registered with both copies verified. The catalog and both "
             "destinations are checked to hold every file once, whole, and no partial file.",
             "", "| figure | value |", "|---|---|",
             f"| jobs/s, first claim to last cataloged | {spread(full, lambda r: r['rate'])} |",
             f"| share of the no-output jobs/s (run by run) | {summary(share, 0, '%')} |",
             f"| jobs/s, whole run | {spread(full, lambda r: r['wall_rate'])} |",
             f"| CPU ms per job | {_cpu(full)} |",
             "| report to cataloged, s: median | "
             f"{summary([w['median'] for w in waits], 2)} |",
             f"| ... mean | {summary([w['mean'] for w in waits], 2)} |",
             f"| ... p99 | {summary([w['p99'] for w in waits], 2)} |",
             f"| ... max | {summary([w['max'] for w in waits], 2)} |"]
    return [*lines, ""]


def _settle(runs: Any) -> list[str]:
    settle = runs.get("settle")
    if not settle:
        return []
    return [f"## Settling lost attempts: {settle[0]['attempts']:,} at once, PostgreSQL", "",
            "One monitor pass (`retry.lose_silent`, as tower/loops/monitor.py calls it) "
            "ending the silent attempts, deciding each job's retry and moving it, committed "
            "(bench/policy.py).", "",
            f"- seconds per pass: {spread(settle, lambda r: r['seconds'], 2)}",
            f"- attempts settled per second: **{spread(settle, lambda r: r['rate'])}**", ""]


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
