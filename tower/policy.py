"""The retry policy: what happens to a job after an attempt that did not succeed.

Outcome classes say how an attempt ended. Infrastructure classes (the pilot
was killed or lost) are not the payload's fault.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tower.config import RetrySettings


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    EXIT_CODE = "exit_code"            # the payload exited non-zero
    SIGNAL = "signal"                  # the payload died of a signal
    WALLTIME = "walltime"              # the payload ran past the job's walltime
    MISSING_OUTPUT = "missing_output"  # exit 0 but a declared output pattern matched nothing
    SETUP = "setup"                    # the pilot could not prepare the job (work dir, templates)
    PILOT_KILLED = "pilot_killed"      # the pilot got SIGTERM (preemption, its own walltime)
    LOST_HEARTBEAT = "lost_heartbeat"  # no heartbeat for longer than the timeout
    CANCELLED = "cancelled"            # the job was cancelled while it ran


INFRASTRUCTURE = frozenset({Outcome.PILOT_KILLED, Outcome.LOST_HEARTBEAT})


@dataclass(frozen=True)
class Decision:
    retry: bool
    #: Seconds before the job may be matched again.
    delay: int
    reason: str


def decide(outcome: Outcome, attempts_used: int, max_attempts: int,
           settings: RetrySettings) -> Decision:
    """Retry while attempts remain, with a backoff that doubles per attempt; else fail."""
    if outcome is Outcome.CANCELLED:
        return Decision(False, 0, "cancelled")
    if attempts_used >= max_attempts:
        return Decision(False, 0, f"{outcome} on attempt {attempts_used} of {max_attempts}")
    delay = min(settings.backoff * 2 ** max(attempts_used - 1, 0), settings.backoff_max)
    return Decision(True, delay, f"{outcome}; retry {attempts_used + 1} of {max_attempts} "
                                 f"in {delay}s")
