"""Waking the tower's loops at once when there is work for them, across processes.

A claim makes room in a site's backlog (work for the matchmaker), a report leaves
outputs to stage and failed jobs to place again (work for the stager and the
matchmaker). The API and the loops may run in two processes (`tower serve` and
`tower run --no-api`), or two towers may share a database: on PostgreSQL the API says
so with NOTIFY in the transaction that made the work (delivered at its commit,
dropped if it rolls back), and every `tower run` LISTENs and cuts the named loops'
pause short. On SQLite the wake stays in the process, where the API serves inside
`tower run`. Either way a lost wake-up costs one interval, never a job.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text
from sqlmodel import Session

from tower.runtime import Runtime

log = logging.getLogger(__name__)

CHANNEL = "gridtower_wake"
#: Seconds between two tries to listen again after the database went away.
RELISTEN = 5.0


def wake(runtime: Runtime, session: Session, *loops: str) -> None:
    """Wake `loops` in this process now, and in every tower on the database at commit."""
    runtime.wake(*loops)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :loops)"),
                        {"channel": CHANNEL, "loops": ",".join(loops)})


def listen(runtime: Runtime, stop: threading.Event) -> threading.Thread | None:
    """On PostgreSQL, a thread that wakes this process's loops as others ask, until `stop`."""
    if runtime.engine.dialect.name != "postgresql":
        return None
    thread = threading.Thread(target=_listen, args=(runtime, stop), name="wakeups",
                              daemon=True)
    thread.start()
    return thread


def _listen(runtime: Runtime, stop: threading.Event) -> None:
    while not stop.is_set():
        # a connection of its own, held for as long as it listens
        connection = runtime.engine.raw_connection()
        try:
            listener = connection.driver_connection
            listener.autocommit = True  # type: ignore[union-attr]
            listener.execute(f"LISTEN {CHANNEL}")  # type: ignore[union-attr]
            while not stop.is_set():
                for note in listener.notifies(timeout=1.0):  # type: ignore[union-attr]
                    runtime.wake(*note.payload.split(","))
        except Exception as exc:  # the thread's boundary: the loops still run on their clock
            log.warning("wake-ups from other processes stopped (%s); listening again in %.0fs",
                        exc, RELISTEN)
            connection.invalidate()
            stop.wait(RELISTEN)
        finally:
            connection.close()
