"""How an attempt ended: the outcome classes the retry policy and the reports speak of.

Classes come from the pilot's report (exit code, signal, walltime, the pilot
was told to stop) and from the batch system, for attempts whose pilot ended
without reporting them (preempted, node failure, out of memory). The tower
adds its own: lost heartbeat, claim timeout, stage-out failure.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    EXIT_CODE = "exit_code"            # the payload exited non-zero
    SIGNAL = "signal"                  # the payload died of a signal
    WALLTIME = "walltime"              # the payload ran past the job's walltime
    OUT_OF_MEMORY = "out_of_memory"    # over its memory request (the pilot or batch killed it)
    MISSING_OUTPUT = "missing_output"  # exit 0 but a declared output pattern matched nothing
    VALIDATION = "validation"          # the production's post step rejected an output
    SETUP = "setup"                    # the pilot could not prepare the job (work dir)
    PILOT_KILLED = "pilot_killed"      # the pilot was told to stop (SIGTERM, scancel)
    PREEMPTED = "preempted"            # the batch system preempted the pilot
    NODE_FAILURE = "node_failure"      # the pilot's node failed
    LOST_HEARTBEAT = "lost_heartbeat"  # no heartbeat for longer than the timeout
    PILOT_VANISHED = "pilot_vanished"  # the pilot's batch job ended with the attempt unreported
    STAGEOUT = "stageout"              # the outputs could not be staged out of the site
    CLAIM_TIMEOUT = "claim_timeout"    # queued at a site, never claimed by a pilot there
    CANCELLED = "cancelled"            # the job was cancelled while it ran


#: Failures of the sites, not of the payload: they draw on their own budget.
INFRASTRUCTURE: frozenset[Outcome] = frozenset({
    Outcome.SETUP, Outcome.PILOT_KILLED, Outcome.PREEMPTED, Outcome.NODE_FAILURE,
    Outcome.LOST_HEARTBEAT, Outcome.PILOT_VANISHED, Outcome.STAGEOUT, Outcome.CLAIM_TIMEOUT,
})
#: Failures that say a site is broken (site health counts these). A pilot told to stop
#: (preemption, its walltime, an admin's scancel) is the batch system at work.
SITE_FAULTS: frozenset[Outcome] = INFRASTRUCTURE - {Outcome.PILOT_KILLED, Outcome.PREEMPTED}
#: Classes that are not failures, and never go to the policy.
NOT_FAILURES: frozenset[Outcome] = frozenset({Outcome.SUCCESS, Outcome.CANCELLED})


def blame(outcome: Outcome) -> str:
    """Whose budget a failure draws on: "infrastructure" or "payload"."""
    return "infrastructure" if outcome in INFRASTRUCTURE else "payload"
