"""Is the tower alive, and ready? What /healthz and /readyz answer (web/health.py) and what
feeds the systemd watchdog (tower.cli.daemon).

A process that runs loops knows their pulses (tower.runtime.Pulse: the loop threads set
them every cycle). An API-only process (`tower serve`) runs none, so each loop process
writes its loops' last cycle ends into the database every second (rows `loop.NAME` of the
presence table, kept at the latest end any process reports), and an API-only process
judges the loops of the whole tower from those rows.

The same thread in every tower process also takes reload requests: SIGHUP (this process)
and `tower reload` (every process sharing the database: a `reload` row whose time moves on).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tower.errors import BackendError
from tower.loops.daemon import LOOPS
from tower.loops.presence import aware, locked
from tower.model.db import transaction
from tower.model.models import Presence
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: Rows of the loops' last cycle ends: `loop.NAME`.
LOOP_ROW = "loop."
#: The row whose time moves on when `tower reload` asks every process to reload.
RELOAD_ROW = "reload"
#: Seconds between two passes of the keeper thread.
REFRESH = 1.0
#: Seconds a probe of the database or the broker may take.
PROBE_TIMEOUT = 3.0
#: Seconds one readiness answer is reused: a client asking in a loop costs the database
#: and the broker one probe a second, whoever asks.
PROBE_REUSE = 1.0


@dataclass(frozen=True)
class Check:
    ok: bool
    #: Why not, in a few words that reveal nothing (no host, user or path).
    reason: str | None = None
    #: The whole story, for the log only.
    detail: str | None = None

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, **({"reason": self.reason} if self.reason else {})}


def health(runtime: Runtime) -> dict[str, Check]:
    """Liveness, cheap, no database: the process serves, and its loop threads live."""
    checks = {"process": Check(True)}
    if runtime.pulses:
        dead = [name for name, pulse in runtime.pulses.items()
                if pulse.thread is not None and not pulse.thread.is_alive()]
        checks["loops"] = Check(not dead, f"thread ended: {', '.join(dead)}" if dead else None)
    return checks


def readiness(runtime: Runtime) -> dict[str, Check]:
    """The database and the broker answer, and the loops cycle."""
    return {"database": _database(runtime), "broker": _broker(runtime),
            "loops": loops(runtime)}


def loops(runtime: Runtime, now: float | None = None) -> Check:
    """The loops of this process cycle; in an API-only process, some process cycles each
    loop (from the rows the loop processes keep)."""
    now = time.time() if now is None else now
    settings = runtime.config.loops
    limit: float = settings.interval + settings.stall_after
    if runtime.pulses:
        ends = {name: pulse.ended or pulse.born for name, pulse in runtime.pulses.items()}
    else:
        try:
            ends = recorded_ends(runtime)
        except Exception as exc:  # the database check says why
            return Check(False, "unknown: the database does not answer", str(exc))
        limit += 5 * REFRESH  # the rows are written every second, a busy database later
        missing = [loop.name for loop in LOOPS if loop.name not in ends]
        if missing:
            return Check(False, f"no tower process has run {', '.join(missing)}")
    stuck = {name: now - end for name, end in ends.items() if now - end > limit}
    if not stuck:
        return Check(True)
    return Check(False, "; ".join(f"{name}: no cycle ended for {age:.0f}s"
                                 for name, age in sorted(stuck.items())))


def recorded_ends(runtime: Runtime) -> dict[str, float]:
    """The last cycle end of each loop any tower process runs (seconds since the epoch)."""
    with Session(runtime.engine) as session:
        rows = session.exec(select(Presence).where(
            col(Presence.name).startswith(LOOP_ROW))).all()
    return {row.name.removeprefix(LOOP_ROW): aware(row.seen).timestamp() for row in rows}


def _database(runtime: Runtime) -> Check:
    try:
        with runtime.engine.connect() as connection:
            if runtime.engine.dialect.name == "postgresql":
                connection.execute(text(f"SET LOCAL statement_timeout = "
                                        f"{int(PROBE_TIMEOUT * 1000)}"))
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure of the driver is "not ready"
        return Check(False, "unreachable", f"{type(exc).__name__}: {exc}")
    return Check(True)


def _broker(runtime: Runtime) -> Check:
    try:
        runtime.broker.reach(PROBE_TIMEOUT)
    except BackendError as exc:
        return Check(False, "unreachable", str(exc))
    return Check(True)


class Probe:
    """Readiness for many callers: one probe at a time, its answer reused for PROBE_REUSE
    seconds; a check that turns failing (or ok again) is logged once, with the detail the
    answer leaves out."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._answer: dict[str, Check] = {}
        self._at = 0.0

    def __call__(self) -> dict[str, Check]:
        # while a probe runs, others take the last answer rather than wait for it (a probe
        # may take PROBE_TIMEOUT per check; no caller should hold a thread that long)
        if not self._lock.acquire(blocking=not self._answer):
            return self._answer
        try:
            if time.monotonic() - self._at >= PROBE_REUSE:
                answer = readiness(self.runtime)
                for name, check in answer.items():
                    before = self._answer.get(name)
                    if not check.ok and (before is None or before.ok):
                        log.warning("readiness: %s failing: %s", name, check.detail or check.reason)
                    elif check.ok and before is not None and not before.ok:
                        log.warning("readiness: %s ok again", name)
                self._answer, self._at = answer, time.monotonic()
            return self._answer
        finally:
            self._lock.release()


def record_loops(session: Session, runtime: Runtime) -> None:
    """Write the last cycle end of each loop of this process, unless a row says later."""
    for name, pulse in runtime.pulses.items():
        if pulse.ended is None:
            continue
        ended = datetime.fromtimestamp(pulse.ended, UTC)
        row = locked(session, LOOP_ROW + name, ended)
        if aware(row.seen) < ended:
            row.seen = ended
            session.add(row)


def ask_reload(session: Session) -> datetime:
    """Ask every tower process on this database to reload its configuration."""
    now = utcnow()
    row = locked(session, RELOAD_ROW, now)
    row.seen = now
    session.add(row)
    return now


def _reload_asked(session: Session) -> datetime | None:
    row = session.get(Presence, RELOAD_ROW)
    return aware(row.seen) if row is not None else None


def notify(message: str) -> bool:
    """Tell systemd (sd_notify: READY=1, WATCHDOG=1, STOPPING=1) when it started us with
    NOTIFY_SOCKET; whether it was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
            channel.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("systemd notification %s not sent: %s", message, exc)
        return False
    return True


def watchdog_period() -> float | None:
    """Seconds between two WATCHDOG=1 (half what systemd waits), when it watches us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def fit(runtime: Runtime) -> bool:
    """What the watchdog is fed for: the process's threads live and its loops cycle (a
    database or broker away is not cured by a restart, a stuck loop is)."""
    return all(check.ok for check in health(runtime).values()) and \
        (not runtime.pulses or loops(runtime).ok)


def keep(runtime: Runtime, stop: threading.Event, hangup: threading.Event,
         reload: Callable[[], object]) -> threading.Thread:
    """Every REFRESH seconds until `stop`: record the loops' pulses, feed systemd's
    watchdog while `fit`, and reload when `hangup` is set (SIGHUP) or `tower reload` asked
    since the last pass."""
    period = watchdog_period()
    fed = 0.0

    def spin() -> None:
        nonlocal fed
        # a request made before this process started is in its configuration already
        handled: datetime | None = None
        read = False
        while not stop.is_set():
            requested = False
            try:
                # an API-only process writes nothing here: a read, not a write transaction
                with (transaction(runtime.engine) if runtime.pulses
                      else Session(runtime.engine)) as session:
                    record_loops(session, runtime)
                    asked = _reload_asked(session)
                requested, handled, read = read and asked != handled, asked, True
            except Exception:  # the thread's boundary: log, try again
                log.exception("loop pulses not recorded")
            if hangup.is_set() or requested:
                hangup.clear()
                try:
                    reload()
                except Exception:  # the thread's boundary: the old configuration stays
                    log.exception("reload failed, the configuration in force stays")
            if period is not None and time.monotonic() - fed >= period and fit(runtime):
                notify("WATCHDOG=1")
                fed = time.monotonic()
            stop.wait(min(REFRESH, period or REFRESH))

    thread = threading.Thread(target=spin, name="keeper", daemon=True)
    thread.start()
    return thread
