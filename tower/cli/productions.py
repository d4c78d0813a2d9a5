"""`tower submit, import, status, show, clone, extend, pause, resume, cancel, watch,
failures, retry`: productions, from request to finished dataset."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import (
    ask,
    by_name,
    json_option,
    local_only,
    print_json,
    print_rows,
    read,
    report_moved,
    runtime,
)
from tower.retries.outcomes import Outcome


def production_line(verb: str, row: dict[str, Any]) -> str:
    split = f" ({row['split']}, as they are cataloged)" if row.get("split") else ""
    return (f"{verb} production {row['production']}: {row['jobs']} jobs, {row['events']} "
            f"events{split} -> dataset {row['dataset']} "
            f"({', '.join(row['destinations']) or 'no outputs'})")


def summaries(name: str | None = None) -> list[dict[str, Any]]:
    """One production's summary, or every production's, in natural order of names."""
    from tower.model import reads

    if name:
        return [read(f"/productions/{quote(name)}",
                     lambda connection: reads.summaries(connection, name)[0])]
    return by_name(read("/productions", lambda connection: {
        "productions": reads.summaries(connection)})["productions"])


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="check and show what would be made; write nothing")
@click.option("--request", "as_request", is_flag=True,
              help="file it as a request for a manager to approve (no manager role needed); "
              "nothing runs before `tower approve`")
@json_option
def submit(file: Path, dry_run: bool, as_request: bool, as_json: bool) -> int:
    """validate a production request and create its jobs"""
    from sites.schema import read_text
    from tower.errors import SpecError

    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions
        from tower.retries import retry

        return productions.submit(session, productions.plan(session, file, runtime.config),
                                  dry_run, requested_by=retry.actor() if as_request else None)

    text = read_text(file, SpecError)
    body = {"text": text, "source": str(file), "dry_run": dry_run,
            "spec_dir": str(file.parent.resolve())}
    data = ask("POST", "/requests" if as_request else "/productions", local, body=body)
    if as_json:
        print_json(data)
        return 0
    verb = "would create" if dry_run else "filed" if as_request else "created"
    for row in data["productions"]:
        print(production_line(verb, row))
        if dry_run:
            first = row["first_job"]
            print("  first job runs: " + " ".join(first["command"]))
            for name, steering in first["steering"].items():
                print(f"  {name}:\n" + "\n".join(f"    {line}" for line in steering.splitlines()))
    return 0


@click.command("import")
@click.argument("sheet", type=click.Path(path_type=Path))
@click.option("--template", required=True, metavar="PRODUCTION",
              help="the production each row derives from")
@click.option("--name", "pattern", metavar="PATTERN",
              help="names of rows without a name column: a Python format string over "
              "{template}, {row} (from 1) and the columns (default: the template's name, a "
              "dash and the row in four digits)")
@click.option("--dry-run", is_flag=True, help="check and show what would be made; write nothing")
@json_option
def import_sheet(sheet: Path, template: str, pattern: str | None, dry_run: bool,
                 as_json: bool) -> int:
    """create one production per row of a request sheet (CSV), each derived from a
    template production; every row is checked first, and a bad row creates nothing"""
    from tower.management import productions, sheets  # a write: its cost goes unnoticed

    pattern = pattern or sheets.DEFAULT_PATTERN
    text, source = sheets.read_file(sheet), str(sheet)
    body = {"text": text, "source": source, "template": template, "name": pattern,
            "dry_run": dry_run}
    data = ask("POST", "/productions/import", lambda runtime, session: productions.submit(
        session, sheets.plan(session, text, source, template, pattern, runtime.config),
        dry_run), body=body)
    if as_json:
        print_json(data)
        return 0
    verb = "would create" if dry_run else "created"
    rows = data["productions"]
    for row in rows:
        print(production_line(verb, row))
    print(f"{verb} {len(rows)} productions from {source}, derived from {template}: "
          f"{sum(row['jobs'] for row in rows)} jobs, {sum(row['events'] for row in rows)} events")
    return 0


@click.command()
@click.argument("production", required=False)
@json_option
def status(production: str | None, as_json: bool) -> int:
    """jobs per state of every production, or of one"""
    from tower.management.progress import bar

    rows = summaries(production)
    if as_json:
        print_json({"productions": rows})
        return 0
    if not rows:
        print("no productions")
    width = max(len(row["name"]) for row in rows) if rows else 0
    phases = max(len(row["phase"]) for row in rows) if rows else 0
    for row in rows:
        states = ", ".join(f"{state} {count}" for state, count in sorted(row["states"].items()))
        print_rows(f"{row['name']:<{width}}  {row['phase']:<{phases}}  {bar(row['states'])}  "
                   f"{row['events_done']}/{row['events_total']} events", [
                       f"{row['jobs']} jobs: {states}",
                       *(f"{held['outputs']} outputs ({held['bytes']} bytes) wait at their "
                         f"sites for {destination}"
                         + (f": {held['last_error']}" if held["last_error"] else "")
                         for destination, held in row["outputs_waiting"].items())],
                   indent=" " * (width + 2))
    return 0


def control(action: str, production: str, as_json: bool) -> int:
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions
        from tower.retries import retry

        return productions.control(session, production, action, retry.actor())

    data = ask("POST", f"/productions/{quote(production)}/{action}", local)
    if as_json:
        print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}"
              + (f"; {data['jobs_cancelled']} jobs cancelled" if action == "cancel" else ""))
    return 0


def control_command(action: str, summary: str) -> click.Command:
    @click.command(action, help=summary)
    @click.argument("production", metavar="PRODUCTION")
    @json_option
    def command(production: str, as_json: bool) -> int:
        return control(action, production, as_json)

    return command


pause = control_command("pause", "stop matching a production's jobs to sites (those at "
                        "sites or running go on)")
resume = control_command("resume", "match a paused production's jobs again")
cancel = control_command("cancel", "cancel a production: its unfinished jobs end cancelled")


@click.command()
@click.argument("production", metavar="PRODUCTION")
@click.option("--events", type=int, required=True, help="the new total of events")
@json_option
def extend(production: str, events: int, as_json: bool) -> int:
    """raise a production's events: new jobs continue its streams with fresh seeds, in
    the same dataset"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions

        return productions.extend(session, production, events)

    data = ask("POST", f"/productions/{quote(production)}/extend", local,
               body={"events": events})
    if as_json:
        print_json(data)
    else:
        print(f"production {data['production']}: {data['events_total']} events, "
              f"{data['jobs_added']} new jobs")
    return 0


@click.command()
@click.argument("production", metavar="PRODUCTION")
@json_option
def show(production: str, as_json: bool) -> int:
    """a production's every resolved setting with the production it comes from, its trial,
    what its successful attempts used (median, p95, max) and the decisions about it"""
    from tower.management.progress import bar

    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions

        return productions.describe(session, production)

    data = ask("GET", f"/productions/{quote(production)}/settings", local)
    if as_json:
        print_json(data)
        return 0
    lineage = " <- ".join([data["name"], *data["lineage"]])
    lines = [f"{bar(data['states'])}  {data['events_done']}/{data['events_total']} events"]
    if data["requested_by"]:
        lines.append(f"requested by {data['requested_by']}")
    if data["decided_by"]:
        lines.append(f"decided by {data['decided_by']} at {data['decided_at']}"
                     + (f": {data['decision_note']}" if data["decision_note"] else ""))
    report = data["trial_report"]
    if report:
        proposal = report["proposal"]
        rate = report["seconds_per_event"]
        lines.append(f"trial: {report['succeeded']}/{report['jobs']} jobs succeeded, "
                     f"{report['events']} events; peak memory {report['peak_memory_mb']} MB, "
                     f"{rate['max'] if rate else '-'} s per event at most")
        lines.append(f"proposal: events_per_job {proposal['events_per_job']}, walltime "
                     f"{proposal['walltime']}s, memory {proposal['memory']} MB "
                     f"({proposal['why']})")
    lines += chain_lines(data["chain"], data["name"])
    lines += usage_lines(data["usage"])
    lines += [f"tuned {row['setting']} {row['old']} -> {row['new']} at {row['at']} "
              f"({row['reason']})" for row in data["tuning"]]
    width = max((len(row["key"]) for row in data["settings"]), default=0)
    for row in data["settings"]:
        value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"])
        lines.append(f"{row['key']:<{width}}  {value:<40}  from {row['from']}")
    print_rows(f"production {data['name']} ({data['state']}), group {data['group']}: "
               f"{lineage}", lines)
    return 0


def chain_lines(steps: list[dict[str, Any]], name: str) -> list[str]:
    """The chain a production belongs to, upstream first: each step's progress, and what
    it reads."""
    from tower.management.progress import bar

    lines = [f"chain of {len(steps)} steps:"] if steps else []
    for step in steps:
        mark = "*" if step["production"] == name else " "
        reads = f" reads {', '.join(step['reads'])}," if step["reads"] else ""
        ended = "ended" if step["ended"] else "running"
        lines.append(f" {mark} {step['production']} ({step['state']}, {ended}):{reads} "
                     f"{step['files_consumed']} files consumed, {step['jobs']} jobs "
                     f"{bar(step['states'])}")
    return lines


def usage_lines(usage: dict[str, Any] | None) -> list[str]:
    """The distributions of what the successful attempts used, as a table."""
    from tower.model.usage import FIGURES

    if not usage:
        return ["usage: no successful attempt measured yet"]
    width = max(len(label) for _, label in FIGURES)
    return [f"usage of the latest {usage['attempts']} successful attempts (at most "
            f"{usage['sample']}); efficiency overall {usage['overall_efficiency'] or '-'}",
            f"  {'':<{width}}  {'median':>10}  {'p95':>10}  {'max':>10}",
            *(f"  {label:<{width}}  " + "  ".join(
                f"{(usage[key] or {}).get(name, '-'):>10}" for name in ("median", "p95", "max"))
              for key, label in FIGURES)]


@click.command()
@click.argument("source", metavar="SOURCE")
@click.argument("name", metavar="NEW")
@click.option("--set", "changes", multiple=True, metavar="KEY=VALUE",
              help="a setting of the new production, e.g. parameters.source=Co57 or "
              "events_total=100000 (repeatable)")
@click.option("--dry-run", is_flag=True, help="check and show; write nothing")
@json_option
def clone(source: str, name: str, changes: tuple[str, ...], dry_run: bool,
          as_json: bool) -> int:
    """derive a new production from another (its parent), changing settings with --set"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import overrides, productions

        return productions.clone(session, runtime.config, source, name,
                                 overrides.parse(list(changes)), dry_run)

    body = {"name": name, "set": list(changes), "dry_run": dry_run}
    data = ask("POST", f"/productions/{quote(source)}/clone", local, body=body)
    if as_json:
        print_json(data)
        return 0
    for row in data["productions"]:
        print(production_line("would create" if dry_run else "created", row))
    return 0


#: What a production is doing when `tower watch` stops following it.
ENDED = ("finished", "cancelled", "rejected", "approval", "requested")


@click.command()
@click.argument("production", required=False, metavar="PRODUCTION")
@click.option("--interval", type=float, default=5.0, show_default=True,
              help="seconds between refreshes")
@click.option("--timeout", type=float, help="give up after this many seconds (exit 1)")
def watch(production: str | None, interval: float, timeout: float | None) -> int:
    """a live view of progress and failures, refreshed until the production (or every
    production) ends"""
    # on a terminal the view replaces itself, elsewhere each refresh follows the last
    from tower.management.progress import bar

    live = sys.stdout.isatty()
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        rows = summaries(production)
        lines = [time.strftime("%H:%M:%S") + f"  every {interval:g}s, Ctrl-C to stop"]
        for row in rows:
            lines.append(f"{row['name']:<30} {row['phase']:<9} "
                         f"{bar(row['states'])}  {row['events_done']}/{row['events_total']} "
                         f"events  {row['states'].get('running', 0)} running  "
                         f"{row['states'].get('failed', 0)} failed")
        print(("\033[H\033[J" if live else "") + "\n".join(lines), flush=True)
        if all(row["phase"] in ENDED for row in rows):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            print("tower: watch: --timeout reached", file=sys.stderr)
            return 1
        time.sleep(interval)


@click.command()
@click.argument("production", metavar="PRODUCTION")
@json_option
def failures(production: str, as_json: bool) -> int:
    """failed attempts of a production grouped by class, exit code or signal, and site,
    with counts, decisions and a sample log tail"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions
        from tower.retries import failures as report

        return report.report(session, productions.get(session, production))

    data = ask("GET", f"/productions/{quote(production)}/failures", local)
    if as_json:
        print_json(data)
        return 0
    print(f"{data['production']}: {data['failed_attempts']} of {data['attempts']} ended "
          "attempts failed")
    if data["groups"]:
        print(f"{'attempts':>8}  {'class':<15} {'code':>5}  {'site':<12} {'blame':<15} decided")
    for group in data["groups"]:
        code = group["exit_code"] if group["exit_code"] is not None else (
            f"sig{group['signal']}" if group["signal"] else "-")
        decided = ", ".join(f"{action} {count}" for action, count in group["decisions"].items())
        print(f"{group['attempts']:>8}  {group['class']:<15} {code:>5}  {group['site']:<12} "
              f"{group['blame']:<15} {decided or '-'}")
        sample = group["sample"]
        print(f"{'':>10}e.g. job {sample['job']} attempt {sample['attempt']}: "
              f"{sample['reason'] or ''}")
        for line in sample["log_tail"].splitlines():
            print(f"{'':>12}| {line}")
    return 0


@click.command()
@click.argument("production", metavar="PRODUCTION")
@click.option("--class", "classes", multiple=True, metavar="CLASS",
              type=click.Choice([str(outcome) for outcome in Outcome]),
              help="only jobs whose last attempt ended in this class (repeatable)")
@click.option("--exit-code", type=int, help="only jobs whose last attempt exited so")
@click.option("--dry-run", is_flag=True, help="show what would be retried")
@json_option
def retry(production: str, classes: tuple[str, ...], exit_code: int | None, dry_run: bool,
          as_json: bool) -> int:
    """give failed jobs of a production a fresh start (their earlier attempts no longer
    count against the retry policy)"""
    from tower.management import productions  # a write: its cost goes unnoticed
    from tower.retries import retry as retrying

    if dry_run:
        from sqlmodel import Session

        local_only()
        opened = runtime()
        with Session(opened.engine) as session:  # never committed
            retried = retrying.retry_failed(session, productions.get(session, production),
                                            retrying.actor(), list(classes), exit_code)
        return report_moved("retried", retried, as_json, dry_run=True)
    body = {"classes": list(classes), "exit_code": exit_code}
    data = ask("POST", f"/productions/{quote(production)}/retry",
               lambda runtime, session: {"retried": retrying.retry_failed(
                   session, productions.get(session, production), retrying.actor(),
                   list(classes), exit_code)}, body=body)
    return report_moved("retried", data["retried"], as_json)


COMMANDS = [submit, import_sheet, status, show, clone, extend, pause, resume, cancel, watch,
            failures, retry]
