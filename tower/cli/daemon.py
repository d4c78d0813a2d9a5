"""`tower init, run, serve, reload`: make a tower's home, run its loops and API, and have
the running tower read its sites and policies again."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tower.cli.common import config, local_only, runtime, state

if TYPE_CHECKING:
    from tower.runtime import Runtime


@click.command()
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--force", is_flag=True, help="overwrite existing files")
def init(directory: Path, force: bool) -> int:
    """write a starter tower.yaml, sites.yaml and example production into DIR"""
    from tower import home

    written = home.init(directory, force=force)
    for path in written:
        print(f"wrote {path}")
    print(f"\nnext: export TOWER_CONFIG={written[0]}\n"
          f"      tower submit {written[2]} && tower run --until-done")
    return 0


@click.command()
@click.option("--until-done", is_flag=True,
              help="exit once every job has ended (non-zero if any did not succeed)")
@click.option("--timeout", type=float, help="with --until-done: give up after SECONDS")
@click.option("--no-api", is_flag=True, help="do not serve the API here")
def run(until_done: bool, timeout: float | None, no_api: bool) -> int:
    """run the tower's loops and its API in one process"""
    from tower.loops import daemon, liveness
    from tower.runtime import Runtime

    loaded = configured()
    opened = Runtime.open(loaded)  # a database of another schema stops here, in one line
    server = None
    if not no_api:
        from web.server import start_server

        try:
            server, url = start_server(loaded)
        except BaseException:
            opened.close()
            raise
        opened.config = loaded.model_copy(
            update={"api": loaded.api.model_copy(update={"url": url})})
        print(f"tower: API at {url}", file=sys.stderr)
        server.bind(opened)
    # the name of this process's leases (Output.lease_owner), told apart from its peers'
    print(f"tower: loops running as instance {opened.instance}", file=sys.stderr)
    stop = threading.Event()
    threads = daemon.run_forever(opened, stop)
    attend(opened, stop)
    try:
        if not until_done:
            while True:
                time.sleep(3600)
        code = wait_done(opened, timeout)
        end_pilots(opened)
        return code
    finally:
        liveness.notify("STOPPING=1")
        daemon.halt(opened, stop)
        for thread in threads:
            thread.join(timeout=30)
        if server is not None:
            server.shutdown()
        opened.close()


def wait_done(opened: Runtime, timeout: float | None) -> int:
    from sqlmodel import Session

    from tower.loops import daemon
    from tower.management import productions
    from tower.management.progress import bar

    deadline = time.monotonic() + timeout if timeout else None
    tty = sys.stderr.isatty()
    turn = 0
    while True:
        # read before the counts: once every job has ended, the counts read after hold
        # ended jobs only (read after them, jobs ending meanwhile looked still running)
        ended = daemon.unfinished(opened) == 0
        with Session(opened.engine) as session:
            counts: dict[str, int] = {}
            for row in productions.summaries(session):
                for state, count in row["states"].items():
                    counts[state] = counts.get(state, 0) + count
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


def end_pilots(opened: Runtime, patience: float = 30.0) -> None:
    """The campaign is over: stop idle pilots now, and give them time to say goodbye."""
    from sqlmodel import Session

    from tower.loops import daemon
    from tower.model import fleet

    deadline = time.monotonic() + patience
    if daemon.stop_pilots(opened):
        while time.monotonic() < deadline:
            with Session(opened.engine) as session:
                if not fleet.active(session):
                    return
            time.sleep(0.5)


@click.command()
@click.option("--bind", metavar="ADDRESS", help="listen on ADDRESS instead of api.bind")
@click.option("--port", type=click.IntRange(0, 65535),
              help="listen on PORT instead of api.port (several API processes of one "
                   "tower.yaml behind a proxy)")
def serve(bind: str | None, port: int | None) -> int:
    """serve the API only"""
    from tower.loops import liveness
    from web.server import start_server

    configured()
    opened = runtime()  # a database of another schema stops here, in one line
    opened.config = opened.config.listening_on(bind, port)
    server, url = start_server(opened.config)
    server.bind(opened)
    stop = threading.Event()
    attend(opened, stop)
    print(f"tower: API at {url}", file=sys.stderr)
    try:
        server.thread.join()
    finally:
        liveness.notify("STOPPING=1")
        stop.set()
        server.shutdown()
    return 0


def configured() -> Any:
    """tower.yaml, loaded, and logging as its `logging` section says."""
    from tower import logs

    loaded = config()
    logs.configure(loaded.logging, verbose=state().verbose)
    return loaded


def attend(opened: Runtime, stop: threading.Event) -> None:
    """What every tower process does besides its work: reload on SIGHUP or `tower reload`,
    the loops' pulses in the database, systemd told it is ready (and its watchdog fed while
    the loops cycle)."""
    import signal

    from tower import reloading
    from tower.loops import liveness

    hangup = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    liveness.keep(opened, stop, hangup, lambda: reloading.reload(opened))
    liveness.notify("READY=1")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
def reload(as_json: bool) -> int:
    """make every running tower process (`tower run`, `tower serve`, on any machine sharing
    the database) read sites.yaml and the retry policies again; the files are checked here
    first, and a bad one is refused (exit 2) with nothing asked"""
    import json

    from tower.loops import liveness
    from tower.model.db import transaction

    local_only()
    opened = runtime()  # loads and checks tower.yaml, sites.yaml, the policies; the schema
    try:
        with transaction(opened.engine) as session:
            asked = liveness.ask_reload(session)
    finally:
        opened.close()
    if as_json:
        print(json.dumps({"asked": asked.isoformat(), "sites": sorted(opened.config.sites),
                          "policies": sorted(opened.config.policies)}))
    else:
        print(f"reload asked at {asked:%H:%M:%S} UTC: each tower process reads its files "
              f"within {liveness.REFRESH:.0f}s and logs what changed (or why it refused)")
    return 0


COMMANDS = [init, run, serve, reload]
