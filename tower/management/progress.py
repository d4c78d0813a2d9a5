"""Progress of productions: a text bar stacked by job state, and their pace (jobs done
per hour, failures, time to completion) from the activity tally."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from catalog.timeutil import utcnow
from tower.retries.outcomes import NOT_FAILURES

if TYPE_CHECKING:
    from sqlmodel import Session

#: Bar characters, in the order states fill the bar from the left.
SYMBOLS = (("done", "#"), ("staging", "+"), ("running", ">"), ("queued", "~"),
           ("assigned", "~"), ("failed", "x"), ("cancelled", "-"), ("held", "!"))


def bar(counts: Mapping[str, int], width: int = 40) -> str:
    """`[####>>~~......]  45%`: one character per share of jobs, the rest defined."""
    total = sum(counts.values())
    if total == 0:
        return "[" + " " * width + "]    -"
    cells = ""
    for state, symbol in SYMBOLS:
        cells += symbol * round(width * counts.get(state, 0) / total)
    cells = cells[:width].ljust(width, ".")
    percent = 100 * counts.get("done", 0) / total
    return f"[{cells}] {percent:3.0f}%"


#: States a job no longer leaves by itself.
FINISHED = frozenset({"done", "failed", "cancelled"})
#: Activity kinds that are not failures.
#: ("done" is tally.DONE: the CLI draws bars with this module without loading the tally
#: and SQLAlchemy, so the tally is imported where it is queried.)
NOT_FAILED = frozenset({"done", *(str(outcome) for outcome in NOT_FAILURES)})


#: The phase of an active step of a chain whose jobs all ended while its upstream may
#: still catalog files it will make jobs of.
WAITING = "waiting for upstream"


def phase(state: str, counts: Mapping[str, int], waiting: bool = False) -> str:
    """What a production is doing: its own state (active, paused, cancelled), `finished`
    once no job of an active production is left to run, or `waiting for upstream` when
    none is left to run yet more are to be made (`waiting`: its upstream has not ended)."""
    if state == "active" and all(name in FINISHED for name in counts):
        if waiting:
            return WAITING
        if counts:
            return "finished"
    return state


def upstream_of(spec: Mapping[str, Any]) -> list[str]:
    """The productions whose outputs a production's request (`spec`, as stored) reads."""
    return [entry["production"] for entry in spec.get("inputs") or []
            if isinstance(entry, dict) and "production" in entry]


@dataclass(frozen=True)
class Pace:
    """How fast a production goes: jobs done in the last hour, attempts failed in the last
    day, and when it will be done at the last hour's rate (None: not moving, or done)."""

    done_last_hour: int
    failed_last_day: int
    eta: datetime | None


def paces(session: Session, counts: Mapping[int, Mapping[str, int]],
          now: datetime | None = None) -> dict[int, Pace]:
    """The pace of every production in `counts` ({production id: {state: jobs}})."""
    from tower.model import tally

    now = now or utcnow()
    hour_ago = now - timedelta(hours=1)
    done: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for point in tally.activity(session, since=now - timedelta(days=1)):
        if point.kind == tally.DONE and point.bucket >= hour_ago:
            done[point.production_id] += point.count
        elif point.kind not in NOT_FAILED:
            failed[point.production_id] += point.count
    result = {}
    for production_id, states in counts.items():
        left = sum(n for state, n in states.items() if state not in FINISHED)
        rate = done[production_id]
        eta = now + timedelta(hours=left / rate) if rate and left else None
        result[production_id] = Pace(rate, failed[production_id], eta)
    return result
