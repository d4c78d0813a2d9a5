"""`pilot`: the program a batch job runs at a site.

Settings come from the command line, or from a YAML file (`--config`) whose
keys are the long options' names with underscores; the command line wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from pilots.client import TowerClient, TowerRefused, TowerUnreachable
from pilots.meter import WATCHES
from pilots.payload import Payload
from pilots.pilot import Pilot, PilotSettings
from pilots.sources import open_source
from pilots.units import parse_duration

log = logging.getLogger("pilots")

#: Exit codes: 0 drained normally, 1 the tower failed us, 2 bad settings, 143 SIGTERM.
EXIT_OK, EXIT_TOWER, EXIT_USAGE, EXIT_TERMINATED = 0, 1, 2, 143

REQUIRED = ("tower", "site", "pilot_id", "scratch", "storage")
DEFAULTS: dict[str, Any] = {
    "queue": "default", "source": "http", "broker_queue": None, "source_options": {},
    "slots": None, "cores": 1, "memory": None, "memory_tolerance": 0.1, "memory_watch": "auto",
    "walltime": "1h", "drain_margin": "60s", "idle_timeout": "120s", "heartbeat": "60s",
    "poll": 1.0, "patience": "300s", "credential": None, "tower_ca": None,
}
DURATIONS = ("walltime", "drain_margin", "idle_timeout", "heartbeat", "patience")
#: Seconds a thread waiting for the interpreter waits before the running one must let go.
SWITCH_INTERVAL = 0.0005
#: The environment variable that carries a rerun's claim (`--rerun`), as JSON.
RERUN_CLAIM = "GRIDTOWER_RERUN_CLAIM"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pilot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML file with any of the settings below")
    p.add_argument("--tower", help="URL of the tower's API")
    p.add_argument("--site", help="the site this pilot runs at")
    p.add_argument("--queue", help="the site queue it serves (default: default)")
    p.add_argument("--pilot-id", help="the id the tower gave this pilot")
    p.add_argument("--source", help="where messages come from: http (the tower's database "
                   "queue) or amqp (RabbitMQ; the URL comes in $GRIDTOWER_BROKER_URL)")
    p.add_argument("--broker-queue", help="broker queue name (default: SITE.QUEUE)")
    p.add_argument("--source-option", action="append", metavar="KEY=VALUE", dest="source_options",
                   help="a setting of the source, e.g. queue_type=quorum or ca_file=PATH "
                   "(repeatable)")
    p.add_argument("--slots", type=int, help="payloads run at once at most (default: its "
                   "cores); they run together while their cores and memory fit the pilot's")
    p.add_argument("--cores", type=int, help="cores of this pilot (default 1)")
    p.add_argument("--memory", type=int, help="memory of this pilot in MB (default: unknown, "
                   "not shared out)")
    p.add_argument("--memory-tolerance", type=float, help="a payload over its memory request "
                   "by more than this fraction is killed (default 0.1)")
    p.add_argument("--memory-watch", choices=WATCHES, help="how payloads' memory is measured "
                   "and enforced (default auto: cgroup v2 if delegated, else polling /proc)")
    p.add_argument("--walltime", help="the pilot's own walltime, e.g. 3600 or 12h")
    p.add_argument("--drain-margin", help="spare time kept beyond a job's walltime")
    p.add_argument("--idle-timeout", help="exit after finding no work this long")
    p.add_argument("--heartbeat", help="seconds between heartbeats")
    p.add_argument("--poll", type=float, help="seconds between polls of an empty queue")
    p.add_argument("--patience", help="how long to wait for an unreachable tower")
    p.add_argument("--scratch", type=Path, help="where job work dirs are made")
    p.add_argument("--storage", type=Path, help="where outputs are left for the stager")
    p.add_argument("--credential", type=Path,
                   help="this pilot's certificate and key (one PEM file, mode 0600)")
    p.add_argument("--tower-ca", type=Path, help="the CA bundle that signed the tower's "
                   "certificate (default: the system's)")
    p.add_argument("--rerun", type=Path, metavar="REPORT", help="run the one job whose "
                   f"claim is in ${RERUN_CLAIM} (tower rerun --site) in a work dir under "
                   "--scratch, its outputs left under --storage, write its report to REPORT "
                   "and exit; no tower is called")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


def rerun(report: Path, scratch: Path, storage: Path) -> int:
    """Run the claim of $GRIDTOWER_RERUN_CLAIM once with the pilot's own payload code, and
    write its report (with how it ran) to `report`, whole or not at all."""
    claim = json.loads(os.environ[RERUN_CLAIM])
    # beside it a failed payload's work dir is kept (tower rerun removes them together)
    work_dir = scratch / f"rerun-{report.stem}" / "work"
    report.parent.mkdir(parents=True, exist_ok=True)
    result = Payload(claim, claim["pilot_values"], work_dir, storage).run()
    partial = report.with_name(f".{report.name}.part")
    partial.write_text(json.dumps(result))
    partial.rename(report)
    return EXIT_OK


def settings_from(args: argparse.Namespace) -> PilotSettings:
    """Merge defaults, the YAML file and the command line; raise ValueError naming the key."""
    values = dict(DEFAULTS)
    if args.config:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings")
        unknown = set(loaded) - set(DEFAULTS) - set(REQUIRED)
        if unknown:
            raise ValueError(f"{args.config}: {sorted(unknown)[0]}: unknown key")
        values.update(loaded)
    if not isinstance(values["source_options"] or {}, dict):
        raise ValueError(f"{args.config}: source_options: expected a mapping")
    options = dict(values["source_options"] or {})
    for item in args.source_options or []:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--source-option {item!r}: expected KEY=VALUE")
        options[key] = value
    values.update({key: value for key, value in vars(args).items()
                   if value is not None and key not in ("config", "verbose", "source_options")})
    values["source_options"] = {str(key): str(value) for key, value in options.items()}
    for key in REQUIRED:
        if not values.get(key):
            raise ValueError(f"{key}: required (give --{key.replace('_', '-')})")
    for key in DURATIONS:
        try:
            values[key] = parse_duration(values[key])
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    _check_shape(values)
    values["broker_queue"] = values["broker_queue"] or f"{values['site']}.{values['queue']}"
    values["scratch"], values["storage"] = Path(values["scratch"]), Path(values["storage"])
    for key in ("credential", "tower_ca"):
        # absolute: a batch system may hand them over in the working directory (arc)
        values[key] = Path(values[key]).absolute() if values[key] else None
    if values["credential"] is not None:
        mode = values["credential"].stat().st_mode & 0o777
        if mode & 0o077:
            raise ValueError(f"credential: {values['credential']} has mode {mode:04o}: a "
                             "private key must be readable by its owner alone")
    return PilotSettings(**values)


def _check_shape(values: dict[str, Any]) -> None:
    """The pilot's cores, memory and slots (slots default to its cores), checked in place."""
    for key in ("cores", "memory", "slots"):
        value = values[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise ValueError(f"{key}: expected a whole number above 0, got {value!r}")
    if values["slots"] is None:
        values["slots"] = values["cores"]
    tolerance = values["memory_tolerance"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
            or not 0 <= tolerance <= 10:
        raise ValueError(f"memory_tolerance: expected a fraction from 0 to 10, got {tolerance!r}")
    if values["memory_watch"] not in WATCHES:
        raise ValueError(f"memory_watch: expected one of {', '.join(WATCHES)}, "
                         f"got {values['memory_watch']!r}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rerun is not None:
        if not (args.scratch and args.storage and os.environ.get(RERUN_CLAIM)):
            print(f"pilot: --rerun needs --scratch, --storage and ${RERUN_CLAIM}",
                  file=sys.stderr)
            return EXIT_USAGE
        return rerun(args.rerun, args.scratch, args.storage)
    # a slot thread back from its payload's wait takes the interpreter from the loop (busy
    # with a claim's JSON, say) within this, not the default 5 ms, at each call it makes
    # until the next payload starts: the gap between payloads, and their rate, in one slot
    sys.setswitchinterval(SWITCH_INTERVAL)
    # the AMQP source reports connection trouble itself, once, without pika's tracebacks
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        settings = settings_from(args)
        client = TowerClient(settings.tower, settings.pilot_id, patience=settings.patience,
                             credential=settings.credential, tower_ca=settings.tower_ca)
        source = open_source(settings.source, client, settings.broker_queue,
                             settings.source_options, settings.patience)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"pilot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pilot = Pilot(settings, client, source)
    signal.signal(signal.SIGTERM, lambda number, frame: pilot.terminate("SIGTERM"))
    signal.signal(signal.SIGINT, lambda number, frame: pilot.terminate("SIGINT"))
    try:
        why = pilot.run()
    except (TowerUnreachable, TowerRefused) as exc:
        log.error("pilot=%s stops: %s", settings.pilot_id, exc)
        return EXIT_TOWER
    finally:
        if settings.credential is not None:
            settings.credential.unlink(missing_ok=True)  # it served this pilot alone
    return EXIT_TERMINATED if why == "SIGTERM" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
