"""`tower`: the production manager's command.

Every command takes --config (else $TOWER_CONFIG, else $TOWER_HOME/tower.yaml)
and most take --json for scripting. Exit codes: 0 success, 1 failure,
2 invalid input or configuration, 3 not found, 4 conflict, 5 refused by a remote tower.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from sqlmodel import Session

from catalog import files
from catalog.timeutil import jsonable
from sites.config import SiteConfig
from sites.schema import read_text
from tower import home
from tower.auth import ca
from tower.config import load_config
from tower.errors import ConfigError, GridtowerError, NotFound, SpecError
from tower.loops import daemon, factory
from tower.management import approval, overrides, productions, sheets, why
from tower.management.notify import Event, send_test
from tower.management.progress import bar, phase
from tower.model import fleet, jobs
from tower.model.db import transaction
from tower.model.states import JobState, PilotState
from tower.remote import Remote, client_settings
from tower.retries import failures, replay, retry
from tower.retries.outcomes import Outcome
from tower.retries.policy import load_policies
from tower.runtime import Runtime

log = logging.getLogger("tower")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # broker trouble is reported once by gridtower itself, without pika's tracebacks
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        return int(args.handler(args) or 0)
    except GridtowerError as error:
        if getattr(args, "json", False):
            print(json.dumps(error.as_dict()))
        print(f"tower: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tower", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--config", help="path of tower.yaml")
    top.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    remote = top.add_argument_group(
        "a remote tower", "work through a tower's API over HTTPS instead of beside its "
        "database (submit, import, status, jobs, job, failures, retry, held, hold, release, why, "
        "sites, pilots); also from --client-config, $TOWER_CLIENT_CONFIG or "
        "~/.gridtower/client.yaml (keys url, cert, key, ca)")
    remote.add_argument("--url", help="the tower's URL, e.g. https://tower.example.org:8470")
    remote.add_argument("--cert", help="your certificate (PEM)")
    remote.add_argument("--key", help="its private key (PEM, mode 0600)")
    remote.add_argument("--ca", help="the CA bundle that signed the tower's certificate")
    remote.add_argument("--client-config", help="a YAML file with url, cert, key and ca")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int | None],
                help: str, json_flag: bool = True,
                within: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
                ) -> argparse.ArgumentParser:
        sub = within.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    sub = command("init", cmd_init, "write a starter tower.yaml, sites.yaml and example "
                  "production into DIR", json_flag=False)
    sub.add_argument("directory", type=Path, metavar="DIR")
    sub.add_argument("--force", action="store_true", help="overwrite existing files")

    sub = command("submit", cmd_submit, "validate a production request and create its jobs")
    sub.add_argument("file", type=Path, metavar="FILE")
    sub.add_argument("--dry-run", action="store_true",
                     help="check and show what would be made; write nothing")
    sub.add_argument("--request", action="store_true",
                     help="file it as a request for a manager to approve (no manager role "
                          "needed); nothing runs before `tower approve`")

    sub = command("import", cmd_import, "create one production per row of a request sheet "
                  "(CSV), each derived from a template production; every row is checked "
                  "first, and a bad row creates nothing")
    sub.add_argument("sheet", type=Path, metavar="SHEET")
    sub.add_argument("--template", required=True, metavar="PRODUCTION",
                     help="the production each row derives from")
    sub.add_argument("--name", default=sheets.DEFAULT_PATTERN, metavar="PATTERN",
                     help="names of rows without a name column: a Python format string over "
                     "{template}, {row} (from 1) and the columns (default: %(default)s)")
    sub.add_argument("--dry-run", action="store_true",
                     help="check and show what would be made; write nothing")

    sub = command("status", cmd_status, "jobs per state of every production, or of one")
    sub.add_argument("production", nargs="?")

    sub = command("jobs", cmd_jobs, "list jobs, filtered; page with --after")
    sub.add_argument("--production")
    sub.add_argument("--state", choices=[state.value for state in JobState])
    sub.add_argument("--site")
    sub.add_argument("--after", type=int, default=0, help="only jobs with a larger id")
    sub.add_argument("--limit", type=int, default=50)

    sub = command("job", cmd_job, "one job with all its attempts")
    sub.add_argument("job_id", type=int, metavar="JOB")

    for name, verb in (("pause", "stop matching a production's jobs to sites (those at "
                                 "sites or running go on)"),
                       ("resume", "match a paused production's jobs again"),
                       ("cancel", "cancel a production: its unfinished jobs end cancelled")):
        sub = command(name, cmd_control, verb)
        sub.add_argument("production", metavar="PRODUCTION")

    sub = command("extend", cmd_extend, "raise a production's events: new jobs continue its "
                  "streams with fresh seeds, in the same dataset")
    sub.add_argument("production", metavar="PRODUCTION")
    sub.add_argument("--events", type=int, required=True, help="the new total of events")

    sub = command("show", cmd_show, "a production's every resolved setting with the "
                  "production it comes from, its trial and the decisions about it")
    sub.add_argument("production", metavar="PRODUCTION")

    sub = command("clone", cmd_clone, "derive a new production from another (its parent), "
                  "changing settings with --set")
    sub.add_argument("source", metavar="SOURCE")
    sub.add_argument("name", metavar="NEW")
    sub.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the new production, e.g. parameters.source=Co57 or "
                          "events_total=100000 (repeatable)")
    sub.add_argument("--dry-run", action="store_true", help="check and show; write nothing")

    sub = command("approve", cmd_approve, "approve a request (its jobs, or its trial, start) "
                  "or a production whose trial ended (the rest of its jobs are made)")
    sub.add_argument("production", metavar="PRODUCTION")
    tuning = sub.add_mutually_exclusive_group()
    tuning.add_argument("--tune", dest="tune", action="store_true", default=None,
                        help="take the trial's proposed walltime, memory and events per job")
    tuning.add_argument("--no-tune", dest="tune", action="store_false",
                        help="keep the requested values")
    sub.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                     help="change a setting before approving (repeatable)")
    sub.add_argument("--note", help="why, for the record")

    sub = command("reject", cmd_reject, "reject a production request")
    sub.add_argument("production", metavar="PRODUCTION")
    sub.add_argument("--reason", required=True)

    command("requests", cmd_requests, "productions waiting for a manager: requests filed by "
            "collaborators, and trials that ended")

    sub = command("watch", cmd_watch, "a live view of progress and failures, refreshed until "
                  "the production (or every production) ends", json_flag=False)
    sub.add_argument("production", nargs="?", metavar="PRODUCTION")
    sub.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    sub.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")

    sub = command("failures", cmd_failures, "failed attempts of a production grouped by class, "
                  "exit code or signal, and site, with counts, decisions and a sample log tail")
    sub.add_argument("production", metavar="PRODUCTION")

    sub = command("retry", cmd_retry, "give failed jobs of a production a fresh start (their "
                  "earlier attempts no longer count against the retry policy)")
    sub.add_argument("production", metavar="PRODUCTION")
    sub.add_argument("--class", dest="classes", action="append", default=[],
                     choices=[str(outcome) for outcome in Outcome], metavar="CLASS",
                     help="only jobs whose last attempt ended in this class (repeatable)")
    sub.add_argument("--exit-code", type=int, help="only jobs whose last attempt exited so")
    sub.add_argument("--dry-run", action="store_true", help="show what would be retried")

    sub = command("held", cmd_held, "held jobs, with who or which rule held them, and why")
    sub.add_argument("production", nargs="?", metavar="PRODUCTION")
    sub.add_argument("--limit", type=int, default=100)

    for name, handler, verb in (("hold", cmd_hold, "hold jobs that have not started: they "
                                 "wait for `tower release`"),
                                ("release", cmd_release, "let held jobs run again, with a "
                                 "fresh retry budget")):
        sub = command(name, handler, verb)
        sub.add_argument("jobs", nargs="*", type=int, metavar="JOB")
        sub.add_argument("--production", help="every such job of this production")

    sub = command("why", cmd_why, "why a job is where it is: what it waits for, which rule "
                  "retried or held it, and its history")
    sub.add_argument("job_id", type=int, metavar="JOB")

    sub = command("policy", cmd_policy, "retry policies: `policy list`, `policy show NAME`, "
                  "`policy check FILE`, `policy simulate NAME --production P`")
    sub.add_argument("action", choices=["list", "show", "check", "simulate"])
    sub.add_argument("name", nargs="?", metavar="NAME|FILE")
    sub.add_argument("--production", help="simulate: the production whose attempts to replay")

    sub = command("notify", cmd_notify, "notifications: `notify test` sends one test "
                  "notification to every webhook and mail recipient now (exit 1 if any failed)")
    sub.add_argument("action", choices=["test"])
    sub.add_argument("--event", choices=[str(event) for event in Event], default=Event.COMPLETED)
    sub.add_argument("--production", help="tell this production's facts (default: made-up ones)")

    sub = command("catalog", cmd_catalog, "the catalog: `catalog ls [DATASET]` lists datasets, "
                  "or the files of one; `catalog find KEY=VALUE...` finds files by metadata; "
                  "`catalog export DATASET` prints its file list; `catalog verify DATASET` "
                  "checks every replica at its destination and lists files there that "
                  "nothing names (exit 1 unless all replicas are good and none is left)")
    sub.add_argument("action", choices=["ls", "find", "export", "verify"])
    sub.add_argument("terms", nargs="*", metavar="DATASET|KEY=VALUE",
                     help="the dataset; for find, conditions that must all hold, such as "
                     "software=toysim, source=Rn222 (a parameter), dataset=NAME, size>1000, "
                     "events>=100")
    sub.add_argument("--format", choices=["json", "names"], default="json",
                     help="export: rows with size, adler32, events and good replicas "
                     "(json), or the LFNs alone (names)")
    sub.add_argument("--remove-leftovers", action="store_true",
                     help="verify: remove the files in the dataset's directories that no "
                     "replica names (orphans, temporaries of dead copies)")

    sub = command("sites", cmd_sites, "sites: `sites` lists each site queue (pilots, jobs "
                  "waiting, backlog and bound, broker depth, last error); `sites check NAME` "
                  "tests access, batch commands, pilot program and paths; `sites explain NAME` "
                  "shows the factory's recent decisions")
    sub.add_argument("action", nargs="?", default="list", choices=["list", "check", "explain"])
    sub.add_argument("name", nargs="?", metavar="NAME", help="the site (check, explain)")
    sub.add_argument("--limit", type=int, default=20, help="explain: decisions shown")

    sub = command("pilots", cmd_pilots, "pilots, newest first")
    sub.add_argument("--site")
    sub.add_argument("--state", choices=[state.value for state in PilotState])
    sub.add_argument("--limit", type=int, default=50)

    sub = command("run", cmd_run, "run the tower's loops and its API in one process",
                  json_flag=False)
    sub.add_argument("--until-done", action="store_true",
                     help="exit once every job has ended (non-zero if any did not succeed)")
    sub.add_argument("--timeout", type=float, help="with --until-done: give up after SECONDS")
    sub.add_argument("--no-api", action="store_true", help="do not serve the API here")

    command("serve", cmd_serve, "serve the API only", json_flag=False)

    ca_help = ("a small certificate authority for the API's HTTPS: `ca init DIR`, "
               "`ca issue KIND NAME --ca DIR`, `ca revoke`, `ca crl`, `ca list`")
    ca_actions = commands.add_parser("ca", help=ca_help, description=ca_help).add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sub = command("init", cmd_ca_init, "make a CA in DIR: its key (0600), certificate, an "
                  "empty CRL and the index of issued certificates", within=ca_actions)
    sub.add_argument("directory", type=Path, metavar="DIR")
    sub.add_argument("--name", default="gridtower CA", help="the CA's common name")
    sub.add_argument("--days", type=int, default=ca.CA_DAYS, help="validity (%(default)s)")
    issue = command("issue", cmd_ca_issue, "issue a certificate and its key (0600): for a "
                    "person (user), a script (robot) or a server (host)", within=ca_actions)
    issue.add_argument("kind", choices=["user", "robot", "host"])
    issue.add_argument("name", metavar="NAME", help="the subject's common name; also the "
                       "file names NAME.crt and NAME.key")
    issue.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: "
                       "the CA's issued/)")
    issue.add_argument("--days", type=int, default=ca.CERT_DAYS, help="validity (%(default)s)")
    issue.add_argument("--host", dest="hosts", action="append", default=[], metavar="H",
                       help="host: a DNS name or IP address it serves (repeatable; default "
                       "NAME)")
    revoke = command("revoke", cmd_ca_revoke, "revoke a certificate, by serial or file; the "
                     "CRL is written anew (servers read it within seconds)", within=ca_actions)
    revoke.add_argument("target", metavar="SERIAL|CERT",
                        help="the serial in hex, as `ca list` shows it, or the certificate file")
    crl = command("crl", cmd_ca_crl, "sign the CRL anew; do so before it expires, or "
                  "servers refuse every client", within=ca_actions)
    crl.add_argument("--days", type=int, help="validity (default: as last time, first "
                     f"{ca.CRL_DAYS})")
    listing = command("list", cmd_ca_list, "certificates issued, with their state",
                      within=ca_actions)
    for sub in (issue, revoke, crl, listing):
        sub.add_argument("--ca", type=Path, required=True, metavar="DIR",
                         help="the CA directory")
    return top


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime.open(load_config(args.config))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _remote(args: argparse.Namespace) -> Remote | None:
    settings = client_settings(args.url, args.cert, args.key, args.ca, args.client_config)
    return Remote(settings) if settings is not None else None


def _ask(args: argparse.Namespace, method: str, path: str,
         local: Callable[[Runtime, Session], Any], params: dict[str, Any] | None = None,
         body: dict[str, Any] | None = None) -> Any:
    """A command's data: from the remote tower's API when one is given, else computed here
    beside the database (in one transaction, for a POST); the same JSON either way."""
    remote = _remote(args)
    if remote is not None:
        try:
            return remote.call(method, path, params, body)
        finally:
            remote.close()
    runtime = _runtime(args)
    try:
        with (transaction(runtime.engine) if method == "POST"
              else Session(runtime.engine)) as session:
            return json.loads(json.dumps(local(runtime, session), default=jsonable))
    finally:
        runtime.close()


def _local_only(args: argparse.Namespace) -> None:
    if _remote(args) is not None:
        raise ConfigError(f"{args.command}: works beside the database only, not through "
                          "a remote tower (drop --url)", field="url")


def cmd_init(args: argparse.Namespace) -> int:
    written = home.init(args.directory, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(f"\nnext: export TOWER_CONFIG={written[0]}\n"
          f"      tower submit {written[2]} && tower run --until-done")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    text = read_text(args.file, SpecError)
    body = {"text": text, "source": str(args.file), "dry_run": args.dry_run,
            "spec_dir": str(args.file.parent.resolve())}
    filer = retry.actor() if args.request else None
    data = _ask(args, "POST", "/requests" if args.request else "/productions",
                lambda runtime, session: productions.submit(
                    session, productions.plan(session, args.file, runtime.config),
                    args.dry_run, requested_by=filer), body=body)
    if args.json:
        _print_json(data)
        return 0
    verb = "would create" if args.dry_run else "filed" if args.request else "created"
    for row in data["productions"]:
        print(_production_line(verb, row))
        if args.dry_run:
            first = row["first_job"]
            print("  first job runs: " + " ".join(first["command"]))
            for name, text in first["steering"].items():
                print(f"  {name}:\n" + "\n".join(f"    {line}" for line in text.splitlines()))
    return 0


def _production_line(verb: str, row: dict[str, Any]) -> str:
    return (f"{verb} production {row['production']}: {row['jobs']} jobs, {row['events']} "
            f"events -> dataset {row['dataset']} "
            f"({', '.join(row['destinations']) or 'no outputs'})")


def cmd_import(args: argparse.Namespace) -> int:
    text, source = sheets.read_file(args.sheet), str(args.sheet)
    body = {"text": text, "source": source, "template": args.template, "name": args.name,
            "dry_run": args.dry_run}
    data = _ask(args, "POST", "/productions/import", lambda runtime, session: productions.submit(
        session, sheets.plan(session, text, source, args.template, args.name, runtime.config),
        args.dry_run), body=body)
    if args.json:
        _print_json(data)
        return 0
    verb = "would create" if args.dry_run else "created"
    rows = data["productions"]
    for row in rows:
        print(_production_line(verb, row))
    print(f"{verb} {len(rows)} productions from {source}, derived from {args.template}: "
          f"{sum(row['jobs'] for row in rows)} jobs, {sum(row['events'] for row in rows)} events")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = _summaries(args, args.production)
    if args.json:
        _print_json({"productions": rows})
        return 0
    if not rows:
        print("no productions")
    for row in rows:
        states = ", ".join(f"{state} {count}" for state, count in sorted(row["states"].items()))
        print(f"{row['name']:<30} {row['state']:<9} {bar(row['states'])}  "
              f"{row['events_done']}/{row['events_total']} events")
        print(f"{'':<30} {row['jobs']} jobs: {states}")
        for destination, held in row["outputs_waiting"].items():
            print(f"{'':<30} {held['outputs']} outputs ({held['bytes']} bytes) wait at their "
                  f"sites for {destination}" + (f": {held['last_error']}"
                                                if held["last_error"] else ""))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {"production": args.production, "state": args.state, "site": args.site,
              "after": args.after, "limit": args.limit}
    data = _ask(args, "GET", "/jobs", lambda runtime, session: jobs.page(session, **params),
                params=params)
    rows = data["jobs"]
    if args.json:
        _print_json(data)
        return 0
    print(f"{'id':>8} {'production':<24} {'index':>6} {'state':<9} {'site':<10} "
          f"{'attempt':>7}  message")
    for row in rows:
        print(f"{row['id']:>8} {row['production']:<24} {row['index']:>6} {row['state']:<9} "
              f"{row['site'] or '-':<10} {row['attempt']:>7}  {row['message'] or ''}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    row = _ask(args, "GET", f"/jobs/{args.job_id}",
               lambda runtime, session: jobs.show(session, args.job_id))
    if args.json:
        _print_json(row)
        return 0
    print(f"job {row['id']} of {row['production']}: stream {row['index']}, seed {row['seed']}, "
          f"events {row['first_event']}..{row['first_event'] + row['events'] - 1}, "
          f"{row['state']}")
    for attempt in row["attempts"]:
        print(f"  attempt {attempt['number']} on {attempt['site']} pilot "
              f"{(attempt['pilot_id'] or '-')[:8]}: {attempt['outcome'] or 'running'} "
              f"{attempt['reason'] or ''}")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    data = _ask(args, "POST", f"/productions/{quote(args.production)}/{args.command}",
                lambda runtime, session: productions.control(session, args.production,
                                                             args.command, retry.actor()))
    if args.json:
        _print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}"
              + (f"; {data['jobs_cancelled']} jobs cancelled" if args.command == "cancel"
                 else ""))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    data = _ask(args, "POST", f"/productions/{quote(args.production)}/extend",
                lambda runtime, session: productions.extend(session, args.production,
                                                            args.events),
                body={"events": args.events})
    if args.json:
        _print_json(data)
    else:
        print(f"production {data['production']}: {data['events_total']} events, "
              f"{data['jobs_added']} new jobs")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", f"/productions/{quote(args.production)}/settings",
                lambda runtime, session: productions.describe(session, args.production))
    if args.json:
        _print_json(data)
        return 0
    lineage = " <- ".join([data["name"], *data["lineage"]])
    print(f"production {data['name']} ({data['state']}), group {data['group']}: {lineage}")
    print(f"  {bar(data['states'])}  {data['events_done']}/{data['events_total']} events")
    if data["requested_by"]:
        print(f"  requested by {data['requested_by']}")
    if data["decided_by"]:
        print(f"  decided by {data['decided_by']} at {data['decided_at']}"
              + (f": {data['decision_note']}" if data["decision_note"] else ""))
    report = data["trial_report"]
    if report:
        proposal = report["proposal"]
        print(f"  trial: {report['succeeded']}/{report['jobs']} jobs succeeded, "
              f"{report['events']} events; peak memory {report['peak_memory_mb']} MB "
              f"({report['memory_per_event_mb']} MB per event)")
        print(f"  proposal: events_per_job {proposal['events_per_job']}, walltime "
              f"{proposal['walltime']}s, memory {proposal['memory']} MB ({proposal['why']})")
    width = max((len(row["key"]) for row in data["settings"]), default=0)
    for row in data["settings"]:
        value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"])
        print(f"  {row['key']:<{width}}  {value:<40}  from {row['from']}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    body = {"name": args.name, "set": args.changes, "dry_run": args.dry_run}
    data = _ask(args, "POST", f"/productions/{quote(args.source)}/clone",
                lambda runtime, session: productions.clone(
                    session, runtime.config, args.source, args.name,
                    overrides.parse(args.changes), args.dry_run), body=body)
    if args.json:
        _print_json(data)
        return 0
    for row in data["productions"]:
        print(_production_line("would create" if args.dry_run else "created", row))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    body = {"tune": args.tune, "set": args.changes, "note": args.note}
    data = _ask(args, "POST", f"/productions/{quote(args.production)}/approve",
                lambda runtime, session: approval.approve(
                    session, runtime.config, args.production, retry.actor(), args.tune,
                    overrides.parse(args.changes), args.note), body=body)
    if args.json:
        _print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}: "
              f"{data['jobs_made']} jobs made")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    data = _ask(args, "POST", f"/productions/{quote(args.production)}/reject",
                lambda runtime, session: approval.reject(session, args.production,
                                                         retry.actor(), args.reason),
                body={"reason": args.reason})
    if args.json:
        _print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}")
    return 0


#: Production states that wait for a manager.
WAITING = ("requested", "approval")


def _summaries(args: argparse.Namespace, name: str | None = None) -> list[dict[str, Any]]:
    """One production's summary, or every production's."""
    if name:
        return [_ask(args, "GET", f"/productions/{quote(name)}",
                     lambda runtime, session: productions.summaries(session, name)[0])]
    return list(_ask(args, "GET", "/productions", lambda runtime, session: {
        "productions": productions.summaries(session)})["productions"])


def cmd_requests(args: argparse.Namespace) -> int:
    rows = [row for row in _summaries(args) if row["state"] in WAITING]
    if args.json:
        _print_json({"productions": rows})
        return 0
    if not rows:
        print("nothing waits for approval")
    for row in rows:
        why = "request" if row["state"] == "requested" else "trial ended"
        print(f"{row['name']:<30} {why:<12} {row['events_total']} events: `tower show "
              f"{row['name']}`, then `tower approve` or `tower reject`")
    return 0


#: What a production is doing when `tower watch` stops following it.
ENDED = ("finished", "cancelled", "rejected", "approval", "requested")


def cmd_watch(args: argparse.Namespace) -> int:
    """Redraw the productions' bars and failures until none has work left; on a terminal
    the view replaces itself, elsewhere each refresh is printed after the last."""
    live = sys.stdout.isatty()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while True:
        rows = _summaries(args, args.production)
        lines = [time.strftime("%H:%M:%S") + f"  every {args.interval:g}s, Ctrl-C to stop"]
        for row in rows:
            lines.append(f"{row['name']:<30} {phase(row['state'], row['states']):<9} "
                         f"{bar(row['states'])}  {row['events_done']}/{row['events_total']} "
                         f"events  {row['states'].get('running', 0)} running  "
                         f"{row['states'].get('failed', 0)} failed")
        print(("\033[H\033[J" if live else "") + "\n".join(lines), flush=True)
        if all(phase(row["state"], row["states"]) in ENDED for row in rows):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            print("tower: watch: --timeout reached", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def cmd_failures(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", f"/productions/{quote(args.production)}/failures",
                lambda runtime, session: failures.report(
                    session, productions.get(session, args.production)))
    if args.json:
        _print_json(data)
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


def cmd_retry(args: argparse.Namespace) -> int:
    if args.dry_run:
        _local_only(args)
        runtime = _runtime(args)
        with Session(runtime.engine) as session:  # never committed
            retried = retry.retry_failed(session, productions.get(session, args.production),
                                         retry.actor(), args.classes, args.exit_code)
        return _report_moved(args, "retried", retried)
    body = {"classes": args.classes, "exit_code": args.exit_code}
    data = _ask(args, "POST", f"/productions/{quote(args.production)}/retry",
                lambda runtime, session: {"retried": retry.retry_failed(
                    session, productions.get(session, args.production), retry.actor(),
                    args.classes, args.exit_code)}, body=body)
    return _report_moved(args, "retried", data["retried"])


def _report_moved(args: argparse.Namespace, verb: str, moved: list[int]) -> int:
    if getattr(args, "dry_run", False):
        verb = f"would be {verb}"
    if args.json:
        _print_json({verb.replace(" ", "_"): moved, "count": len(moved)})
    else:
        shown = ", ".join(map(str, moved[:20])) + (" ..." if len(moved) > 20 else "")
        print(f"{len(moved)} jobs {verb}" + (f": {shown}" if moved else ""))
    return 0


def cmd_held(args: argparse.Namespace) -> int:
    params = {"production": args.production, "limit": args.limit}
    rows = _ask(args, "GET", "/held", lambda runtime, session: {"held": retry.held(
        session, productions.get(session, args.production) if args.production else None,
        args.limit)}, params=params)["held"]
    if args.json:
        _print_json({"held": rows})
        return 0
    if not rows:
        print("no held jobs")
    for row in rows:
        print(f"job {row['id']} (stream {row['index']}, attempt {row['attempt']}) held by "
              f"{row['held_by']} since {row['since'].replace('T', ' ')}: {row['reason']}")
    return 0


def _move_jobs(args: argparse.Namespace, action: str, verb: str) -> int:
    if not args.jobs and not args.production:
        raise ConfigError(f"{args.command}: give JOB ids or --production", field="jobs")
    body = {"jobs": args.jobs, "production": args.production}
    data = _ask(args, "POST", f"/jobs/{action}", lambda runtime, session: {
        verb: retry.act_on(session, action, args.jobs, args.production, retry.actor())},
        body=body)
    return _report_moved(args, verb, data[verb])


def cmd_hold(args: argparse.Namespace) -> int:
    return _move_jobs(args, "hold", "held")


def cmd_release(args: argparse.Namespace) -> int:
    return _move_jobs(args, "release", "released")


def cmd_why(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", f"/jobs/{args.job_id}/why",
                lambda runtime, session: why.explain(session, runtime.config, args.job_id))
    if args.json:
        _print_json(data)
        return 0
    print(f"job {data['job']} of {data['production']} is {data['state']} "
          f"(attempt {data['attempt']}{', site ' + data['site'] if data['site'] else ''})")
    for line in data["why"]:
        print(f"  {line}")
    if data["decisions"]:
        print("decisions:")
    for row in data["decisions"]:
        print(f"  {row['at'][:19]}  after attempt {row['attempt']}: "
              f"{'(passive) ' if row['passive'] else ''}{row['by']}: {row['reason']}")
    print("history:")
    for event in data["history"]:
        print(f"  {event['at'][:19]}  {event['from']:>9} -> {event['to']:<9} {event['reason']}")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    _local_only(args)
    if args.action == "check":
        if not args.name:
            raise ConfigError("policy check: give the FILE", field="name")
        path = Path(args.name).resolve()
        names = sorted(load_policies(str(path), path.parent))
        if args.json:
            _print_json({"file": str(path), "policies": names})
        else:
            print(f"{path}: valid; policies: {', '.join(names)}")
        return 0
    config = load_config(args.config)
    if args.action == "list":
        rows = [{"name": name, "default": name == config.retry.policy,
                 "description": policy.description} for name, policy in config.policies.items()]
        if args.json:
            _print_json({"policies": rows})
        for row in [] if args.json else rows:
            print(f"{row['name']:<16}{' (default)' if row['default'] else ''}  "
                  f"{row['description']}")
        return 0
    if not args.name or args.name not in config.policies:
        raise NotFound(f"policy {args.action}: no policy named {args.name!r} (known: "
                       f"{', '.join(sorted(config.policies))})", field="name")
    if args.action == "show":
        body = config.policies[args.name].model_dump(mode="json", by_alias=True,
                                                     exclude_none=True)
        if args.json:
            _print_json({"name": args.name, "policy": body})
        else:
            print(yaml.safe_dump({args.name: body}, sort_keys=False), end="")
        return 0
    if not args.production:
        raise ConfigError("policy simulate: give --production", field="production")
    runtime = Runtime.open(config)
    with Session(runtime.engine) as session:
        data = replay.simulate(session, productions.get(session, args.production), args.name,
                               config.policies[args.name])
    if args.json:
        _print_json(data)
        return 0
    print(f"{data['production']} replayed through policy {data['policy']}: "
          f"{data['different']} of {data['decisions']} decisions would differ")
    for change in data["changes"]:
        print(f"  {change['count']:>6}  {change['class']:<15} {change['recorded']} -> "
              f"{change['simulated']}")
    for example in data["examples"]:
        print(f"  job {example['job']} attempt {example['attempt']}:\n"
              f"      was      {example['recorded']}\n      would be {example['simulated']}")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    _local_only(args)
    deliveries = send_test(load_config(args.config), Event(args.event), args.production)
    if args.json:
        _print_json({"event": args.event, "deliveries": [
            {"target": d.target, "delivered": d.error is None, "error": d.error}
            for d in deliveries]})
    for delivery in [] if args.json else deliveries:
        print(f"delivered  {delivery.target}" if delivery.error is None
              else f"FAILED     {delivery.error}")
    return int(any(delivery.error is not None for delivery in deliveries))


def cmd_catalog(args: argparse.Namespace) -> int:
    _local_only(args)
    from catalog import queries
    from tower.management.catalog_verify import verify_dataset

    conditions = queries.parse_conditions(args.terms) if args.action == "find" else []
    if args.action != "find" and (len(args.terms) > 1 or
                                  (args.action != "ls" and not args.terms)):
        wanted = "at most one DATASET" if args.action == "ls" else "one DATASET"
        raise ConfigError(f"catalog {args.action}: give {wanted}", field="dataset")
    dataset = args.terms[0] if args.terms and not conditions else None
    runtime = _runtime(args)
    try:
        if args.action == "verify":
            return _print_verification(verify_dataset(runtime, args.terms[0],
                                                      args.remove_leftovers), args.json)
        with Session(runtime.engine) as session:
            if args.action == "export":
                rows = queries.export(session, args.terms[0], args.format)
            elif conditions:
                rows = queries.find(session, conditions)
            else:
                rows = files.files(session, dataset) if dataset else files.datasets(session)
    finally:
        runtime.close()
    if args.action == "export" and args.format == "names" and not args.json:
        print("\n".join(rows))
    elif args.action == "export":
        _print_json({"dataset": dataset, "names" if args.format == "names" else "files": rows})
    elif args.json:
        _print_json({"datasets": rows} if args.action == "ls" and not dataset
                    else {"files": rows})
    elif dataset or conditions:
        _print_files(rows)
    else:
        for row in rows:
            print(f"{row['name']:<40} {row['files']:>6} files {row['bytes']:>14} bytes")
    return 0


def _print_files(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        where = ", ".join(r["url"] if r["state"] == "good" else f"{r['url']} ({r['state']})"
                          for r in row["replicas"]) or "no replica"
        events = "" if row["events"] is None else f"  {row['events']} events"
        print(f"{row['lfn']}  {row['size']:>10}  adler32:{row['adler32']}{events}  {where}")


def _print_verification(summary: dict[str, Any], as_json: bool) -> int:
    """Exit 1 unless every replica was reached and is good, and no leftover remains."""
    kept = len(summary["leftovers"]) - summary["removed"]
    failed = bool(summary["bad"] or summary["missing"] or summary["unreachable"] or kept)
    if as_json:
        _print_json(summary)
        return int(failed)
    print(f"{summary['dataset']}: {summary['checked']} of {summary['replicas']} replicas "
          f"checked: {summary['good']} good, {summary['bad']} bad, "
          f"{summary['missing']} missing")
    for problem in summary["problems"]:
        print(f"  {problem['state']:<8} {problem['destination']}:{problem['path']}  "
              f"{problem['error']}")
    for place in summary["unreachable"]:
        print(f"  unreachable {place['destination']} ({place['replicas']} replicas not "
              f"checked): {place['error']}")
    for leftover in summary["leftovers"]:
        print(f"  {leftover['kind']:<8} {leftover['where']}:{leftover['path']}  "
              f"{leftover['size']} bytes, named by no replica"
              + ("  (removed)" if summary["removed"] else ""))
    return int(failed)


def cmd_sites(args: argparse.Namespace) -> int:
    if args.action != "list":
        if not args.name:
            raise ConfigError(f"sites {args.action}: give the site's NAME", field="name")
        return _site_check(args) if args.action == "check" else _site_explain(args)
    from tower.loops.site_status import site_queues

    def local(runtime: Runtime, session: Session) -> dict[str, Any]:
        rows, problem = site_queues(runtime)
        return {"sites": rows, "broker_error": problem, "insecure": runtime.config.api.exposed}

    data = _ask(args, "GET", "/sites", local)
    rows, problem = data["sites"], data["broker_error"]
    if args.json:
        _print_json(data)
        return 1 if problem else 0
    if data.get("insecure"):
        print("\033[1;31mtower: the API serves plain HTTP to other hosts (api.insecure): "
              "every caller may do everything\033[0m")
    print(f"{'site':<16} {'queue':<10} {'batch':<8} {'pilots p/r/d/e/l':>16} {'waiting':>8} "
          f"{'backlog':>9} {'broker':>7}")
    for row in rows:
        pilots = "/".join(str(row["pilots"][state]) for state in PilotState)
        held = ("disabled" if not row["enabled"] else "cooling" if row["cooling_until"]
                else f"{row['backlog']}/{row['bound']}")
        broker = "?" if row["broker"] is None else str(row["broker"])
        print(f"{row['site']:<16} {row['queue']:<10} {row['batch']:<8} {pilots:>16} "
              f"{row['waiting']:>8} {held:>9} {broker:>7}")
        if row["cooling_until"]:
            print(f"{'':<16} out of brokering until {row['cooling_until'][11:19]} UTC: "
                  f"{row['cooling_reason']}")
        if row["last_error"]:
            print(f"{'':<16} last error {row['last_error_at'][:19].replace('T', ' ')}: "
                  f"{row['last_error']}")
    if problem:
        print(f"tower: broker unreachable: {problem}", file=sys.stderr)
        return 1
    return 0


def _site(runtime: Runtime, name: str) -> SiteConfig:
    if name not in runtime.config.sites:
        raise NotFound(f"no site {name!r} (known: {', '.join(runtime.config.sites)})",
                       field="name")
    return runtime.config.sites[name]


def _site_check(args: argparse.Namespace) -> int:
    from tower.loops.factory import pilot_command
    from tower.loops.site_check import check_site

    _local_only(args)
    runtime = _runtime(args)
    try:
        site = _site(runtime, args.name)
        batch = runtime.batch_system(site.name)
        checks = check_site(site, batch, runtime.runner(site.name), pilot_command(site))
    finally:
        runtime.close()
    if args.json:
        _print_json({"site": site.name, "checks": [vars(check) for check in checks]})
    else:
        for check in checks:
            print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(check.passed for check in checks) else 1


def _site_explain(args: argparse.Namespace) -> int:
    def local(runtime: Runtime, session: Session) -> dict[str, Any]:
        _site(runtime, args.name)
        return {"site": args.name, "decisions": [
            row.model_dump(mode="json")
            for row in factory.recent_decisions(session, args.name, args.limit)]}

    data = _ask(args, "GET", f"/sites/{quote(args.name)}/decisions", local,
                params={"limit": args.limit})
    rows = data["decisions"]
    if args.json:
        _print_json(data)
        return 0
    if not rows:
        print(f"site {args.name}: no factory decision yet (is `tower run` running, and the "
              "site enabled?)")
    for row in reversed(rows):
        print(f"{row['at'][:19]}  {row['queue']:<10} {row['note']}")
    return 0


def cmd_pilots(args: argparse.Namespace) -> int:
    params = {"site": args.site, "state": args.state, "limit": args.limit}
    rows = _ask(args, "GET", "/pilots", lambda runtime, session: {"pilots": fleet.listing(
        session, args.site, args.state, args.limit)}, params=params)["pilots"]
    if args.json:
        _print_json({"pilots": rows})
        return 0
    print(f"{'pilot':<12} {'site':<12} {'queue':<10} {'state':<9} {'batch id':<10} "
          f"{'submitted':<19}  message")
    for row in rows:
        print(f"{row['id'][:12]:<12} {row['site']:<12} {row['queue']:<10} {row['state']:<9} "
              f"{row['batch_id'] or '-':<10} {row['submitted_at'][:19]:<19}  "
              f"{row['message'] or ''}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    server = None
    if not args.no_api:
        from web.server import start_server

        server, url = start_server(config)
        config = config.model_copy(update={"api": config.api.model_copy(update={"url": url})})
        print(f"tower: API at {url}", file=sys.stderr)
    runtime = Runtime.open(config)
    if server is not None:
        server.bind(runtime)
    stop = threading.Event()
    threads = daemon.run_forever(runtime, stop)
    try:
        if not args.until_done:
            while True:
                time.sleep(3600)
        code = _wait_done(runtime, args.timeout)
        _end_pilots(runtime)
        return code
    finally:
        daemon.halt(runtime, stop)
        for thread in threads:
            thread.join(timeout=30)
        if server is not None:
            server.shutdown()
        runtime.close()


def _wait_done(runtime: Runtime, timeout: float | None) -> int:
    deadline = time.monotonic() + timeout if timeout else None
    tty = sys.stderr.isatty()
    turn = 0
    while True:
        with Session(runtime.engine) as session:
            counts: dict[str, int] = {}
            for row in productions.summaries(session):
                for state, count in row["states"].items():
                    counts[state] = counts.get(state, 0) + count
        ended = daemon.unfinished(runtime) == 0
        # checked every second; a log that is not a terminal gets a line every 5 s
        if tty or ended or turn % 5 == 0:
            line = f"{bar(counts)}  " + " ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr,
                  flush=True)
        if ended:
            print(file=sys.stderr) if tty else None
            return 0 if set(counts) <= {"done"} else 1
        if deadline is not None and time.monotonic() > deadline:
            print(f"\ntower: gave up after {timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(1)
        turn += 1


def _end_pilots(runtime: Runtime, patience: float = 30.0) -> None:
    """The campaign is over: stop idle pilots now, and give them time to say goodbye."""
    deadline = time.monotonic() + patience
    if daemon.stop_pilots(runtime):
        while time.monotonic() < deadline:
            with Session(runtime.engine) as session:
                if not fleet.active(session):
                    return
            time.sleep(0.5)


def cmd_serve(args: argparse.Namespace) -> int:
    from web.server import start_server

    config = load_config(args.config)
    server, url = start_server(config)
    server.bind(Runtime.open(config))
    print(f"tower: API at {url}", file=sys.stderr)
    try:
        server.thread.join()
    finally:
        server.shutdown()
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    made = ca.init_ca(args.directory, args.name, args.days)
    paths = {"cert": str(made.cert), "key": str(made.key), "crl": str(made.crl),
             "index": str(made.index)}
    if args.json:
        _print_json(paths)
    else:
        print("\n".join(f"wrote {path}" for path in paths.values()))
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    cert, key = ca.issue(args.ca, args.kind, args.name, args.days, hosts=args.hosts,
                         out=args.out)
    if args.json:
        _print_json({"cert": str(cert), "key": str(key)})
    else:
        print(f"wrote {cert}\nwrote {key}")
    return 0


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    serial = ca.revoke(args.ca, args.target)
    crl = ca.CaFiles(args.ca).crl
    if args.json:
        _print_json({"revoked": f"{serial:x}", "crl": str(crl)})
    else:
        print(f"revoked serial {serial:x}; wrote {crl}")
    return 0


def cmd_ca_crl(args: argparse.Namespace) -> int:
    crl = ca.write_crl(args.ca, args.days)
    if args.json:
        _print_json({"crl": str(crl)})
    else:
        print(f"wrote {crl}")
    return 0


def cmd_ca_list(args: argparse.Namespace) -> int:
    rows = ca.listing(args.ca)
    if args.json:
        _print_json({"certificates": rows})
        return 0
    if not rows:
        print("no certificates issued")
    for row in rows:
        print(f"{row['serial']:<40} {row['kind']:<6} {row['state']:<8} "
              f"until {row['not_after'][:16]}  {row['subject']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
