"""The `condor` batch system: pilots as HTCondor vanilla-universe jobs, through the site's runner.

A pilot is one job whose submit description goes to `condor_submit -terse -` on stdin,
never on a command line. The job runs the execute point's /bin/sh with a fixed one-line
script that evaluates the admin's setup lines, then `exec`s the pilot's argv; both travel
as the job's arguments in HTCondor's "new syntax" (the whole list in double quotes, `""`
for a literal double quote, each argument in single quotes, `''` for a literal single
quote). The pilot's secrets travel in `environment`, quoted the same way. Every `$` we
write becomes `$(DOLLAR)`, so condor_submit expands no macro in our values, and a value
with a newline or another control character is refused: it would start a new submit
command. The walltime is `allowed_job_duration` (the job is held, code 46, when it runs
longer); an evicted pilot is not run again, `periodic_remove` takes it out of the queue.

Status comes from `condor_q -json`; a job no longer queued is looked up with
`condor_history -json`.

| JobStatus                  | when                                    | pilot   | outcome        |
|----------------------------|-----------------------------------------|---------|----------------|
| 1 Idle                     | never started                           | pending |                |
| 1 Idle                     | evicted, VacateReasonCode 1002, 1007,   | ended   | node_failure   |
|                            | 1008, 1012, 1020, 1021, 1024 (the EP or |         |                |
|                            | the shadow failed)                      |         |                |
| 1 Idle                     | evicted, VacateReasonCode 34 (memory)   | ended   | out_of_memory  |
| 1 Idle                     | evicted otherwise (drain, preemption)   | ended   | preempted      |
| 2 Running, 6 Transferring  |                                         | running |                |
| Output, 7 Suspended        |                                         |         |                |
| 4 Completed                | exit code or signal                     | ended   | pilot_vanished |
| 3 Removed                  | by our periodic_remove (evicted)        | ended   | preempted      |
| 3 Removed                  | via condor_rm                           | ended   | pilot_killed   |
| 3 Removed                  | otherwise (the site's policy)           | ended   | pilot_vanished |
| 5 Held                     | HoldReasonCode 15, 16 (submitted on     | pending |                |
|                            | hold, spooling input)                   |         |                |
| 5 Held                     | 46, 47 (allowed job/execute duration)   | ended   | pilot_killed   |
| 5 Held                     | 34 (over its memory)                    | ended   | out_of_memory  |
| 5 Held                     | 1 (condor_hold)                         | ended   | pilot_killed   |
| 5 Held                     | 6-14, 18, 19, 21-23, 35, 45, 48 (could  | ended   | node_failure   |
|                            | not start, open files or transfer them) |         |                |
| 5 Held                     | any other code (job or site policy)     | ended   | pilot_vanished |
| other, or in neither       |                                         | ended   | pilot_vanished |
| condor_q nor condor_history|                                         |         |                |
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import Field, field_validator

from sites.batch import BatchState, BatchStatus, PilotRequest, Probe
from sites.commanded import CommandedBatch
from sites.errors import BackendError
from sites.schema import Strict

#: What statuses() asks condor_q and condor_history for.
ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal",
              "HoldReason", "HoldReasonCode", "RemoveReason", "NumJobStarts", "VacateReason",
              "VacateReasonCode")
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)
#: Held, but meant to start later.
HOLDS_PENDING = frozenset({15, 16})
#: HoldReasonCode -> the outcome class of the attempts the pilot left unfinished.
HOLD_OUTCOMES = {
    46: "pilot_killed", 47: "pilot_killed", 34: "out_of_memory", 1: "pilot_killed",
    **dict.fromkeys((6, 7, 8, 9, 10, 11, 12, 13, 14, 18, 19, 21, 22, 23, 35, 45, 48),
                    "node_failure"),
}
#: VacateReasonCode of an evicted pilot -> outcome; any other code is a preemption.
VACATE_OUTCOMES = {34: "out_of_memory",
                   **dict.fromkeys((1002, 1007, 1008, 1012, 1020, 1021, 1024), "node_failure")}
#: The tower writes an evicted pilot off, so HTCondor must not run it again
#: (condor_submit sets NumJobStarts = 0; the shadow counts each start).
EVICTED = "JobStatus == 1 && NumJobStarts > 0"
#: Run by /bin/sh -c: $1 is the number of setup lines that follow, then the pilot's argv.
#: The lines are joined with newlines and evaluated together, as a script would run them.
WRAPPER = (r'''n=$1; shift; s=; while [ "$n" -gt 0 ]; do s=$(printf '%s\n' "$s" "$1"); '''
           r'''shift; n=$((n - 1)); done; eval "$s"; exec "$@"''')

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JOB_ID = re.compile(r"\d+\.\d+")
_TERSE = re.compile(r"^\s*(\d+\.\d+) - (\d+\.\d+)\s*$", re.MULTILINE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBMIT_COMMAND = re.compile(r"\+?[A-Za-z_][A-Za-z0-9_.]*\s*=")
_GONE = re.compile(r"Job \d+\.\d+ (not found|already marked for removal)"
                   r"|Couldn't find/remove all jobs")
#: A reason ends up in the pilot's message: keep it short.
_REASON_LENGTH = 200


def _raw(value: str) -> str:
    # written verbatim as (part of) a submit line: it must stay on its line
    if _CONTROL.search(value):
        raise ValueError("must not contain newlines or other control characters")
    if value.endswith("\\"):
        raise ValueError("must not end with a backslash (it continues the line)")
    return value


class CondorOptions(Strict):
    """`batch_options` of an HTCondor site."""

    #: A ClassAd expression the execute slot must satisfy, e.g. 'OpSys == "LINUX"'.
    requirements: str | None = None
    #: The accounting group the pilots are charged to.
    accounting_group: str | None = None
    #: More submit commands, one per item, e.g. '+ProjectName = "physics"'; they come after
    #: ours, so they may override them.
    extra: list[str] = Field(default_factory=list)
    #: Where pilot logs go at the site (output, error, job event log); default: SCRATCH/pilot-logs.
    log_dir: str | None = None

    @field_validator("requirements", "log_dir")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        return None if value is None else _raw(value)

    @field_validator("accounting_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        # a name, not an expression: nothing a submit line would read further
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]+", value):
            raise ValueError(f"{value!r}: expected a group name (letters, digits, _ . @ -)")
        return value

    @field_validator("extra")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        for item in value:
            if re.match(r"queue\b", _raw(item).strip(), re.IGNORECASE):
                raise ValueError(f"{item!r}: gridtower queues each pilot itself")
            if not _SUBMIT_COMMAND.match(item.strip()):
                raise ValueError(f"{item!r}: each item is one submit command, 'name = value'")
        return value


class CondorBatch(CommandedBatch):
    """Implements `BatchSystem` with condor_submit, condor_q, condor_history and condor_rm."""

    options_model = CondorOptions

    def probes(self) -> list[Probe]:
        # condor_q asks the schedd: it proves the pool answers and authenticates us
        return [Probe(f"command {argv[0]}", argv) for argv in (
            ["condor_submit", "-version"], ["condor_q", "-totals"], ["condor_rm", "-version"])]

    def description(self, request: PilotRequest) -> str:
        """The submit description of one pilot; it holds the pilot's secrets."""
        shape = self.site.pilot
        setup = [self._value(f"sites.{self.site.name}.setup[{index}]", line)
                 for index, line in enumerate(self.site.setup)]
        argv = [self._value(f"argv[{index}]", arg) for index, arg in enumerate(request.argv)]
        environment = []
        for name, value in request.environment.items():
            if not _ENV_NAME.fullmatch(name):
                raise BackendError(f"site={self.site.name}: environment variable name {name!r} "
                                   "is not a shell name", field="environment")
            environment.append(f"{name}={self._value(f'environment.{name}', value)}")
        log = self._value("log_path", self.log_path(request.pilot_id))
        arguments = _quoted(["-c", WRAPPER, "gridtower-pilot", str(len(setup)), *setup, *argv])
        lines = [
            "universe = vanilla",
            "executable = /bin/sh",
            # the execute point's own shell, not a copy of the submit host's
            "transfer_executable = false",
            f"arguments = {arguments}",
            *([f"environment = {_quoted(environment)}"] if environment else []),
            # output and error in one file: HTCondor merges them
            f"output = {_dollars(log)}",
            f"error = {_dollars(log)}",
            f"log = {_dollars(log.removesuffix('.log'))}.condor.log",
            f"request_cpus = {shape.cores}",
            *([f"request_memory = {int(shape.memory)}"] if shape.memory else []),
            f"allowed_job_duration = {int(shape.walltime)}",
            f"periodic_remove = {EVICTED}",
            *([f"requirements = {self.options.requirements}"] if self.options.requirements
              else []),
            *([f"accounting_group = {self.options.accounting_group}"]
              if self.options.accounting_group else []),
            *self.options.extra,
            "queue 1",
        ]
        return "\n".join(lines) + "\n"

    def submit(self, request: PilotRequest) -> str:
        description = self.description(request)
        self._prepare()
        done = self.runner.run(["condor_submit", "-terse", "-"], input=description)
        if done.code != 0:
            # condor_submit may quote the line it refuses: keep the secrets out of the message
            raise self._error("condor_submit", done, secrets=[
                form for secret in request.environment.values()
                for form in (secret, _dollars(secret.replace("'", "''").replace('"', '""')))])
        ranges = _TERSE.findall(done.stdout)
        if len(ranges) != 1 or ranges[0][0] != ranges[0][1]:
            raise BackendError(f"site={self.site.name} ({self.runner.where}): condor_submit "
                               f"answered {done.stdout.strip()!r}, not one job id")
        return str(ranges[0][0])

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        # ids are ours; anything else never reaches a command line
        ids = [batch_id for batch_id in batch_ids if _JOB_ID.fullmatch(batch_id)]
        found = self._query(["condor_q", "-json", "-attributes", ",".join(ATTRIBUTES), *ids],
                            required=True) if ids else {}
        missing = [batch_id for batch_id in ids if batch_id not in found]
        if missing:
            # -match stops the scan of the history files once every job is found
            found.update(self._query(["condor_history", "-json", "-attributes",
                                      ",".join(ATTRIBUTES), "-match", str(len(missing)),
                                      *missing], required=False))
        return {batch_id: found.get(batch_id) or BatchStatus(
                    BatchState.ENDED, reason="unknown to condor_q and condor_history",
                    outcome="pilot_vanished")
                for batch_id in batch_ids}

    def cancel(self, batch_ids: list[str]) -> None:
        ids = [batch_id for batch_id in batch_ids if _JOB_ID.fullmatch(batch_id)]
        if not ids:
            return
        # condor_rm sends the job's KillSig (SIGTERM), then SIGKILL after JobMaxVacateTime
        done = self.runner.run(["condor_rm", *ids])
        problems = [line for line in done.stderr.splitlines()
                    if line.strip() and not _GONE.match(line.strip())]
        # a pilot that already left the queue is cancelled enough
        if done.code != 0 and (problems or not done.stderr.strip()):
            raise self._error("condor_rm", done)

    def _query(self, argv: list[str], required: bool) -> dict[str, BatchStatus]:
        done = self.runner.run(argv)
        if done.code != 0:
            if required:
                raise self._error(argv[0], done)
            return {}  # no history here: the jobs left the queue all the same
        try:
            # nothing at all when no job matches
            ads = json.loads(done.stdout) if done.stdout.strip() else []
        except json.JSONDecodeError as exc:
            raise BackendError(f"site={self.site.name} ({self.runner.where}): {argv[0]} "
                               f"printed no JSON ({exc})") from None
        return {f"{ad['ClusterId']}.{ad['ProcId']}": status(ad) for ad in ads
                if isinstance(ad, dict) and "ClusterId" in ad and "ProcId" in ad}

    def _value(self, field: str, value: str) -> str:
        if _CONTROL.search(value):
            problem = "must not contain newlines or other control characters"
        elif "$$(" in value:
            problem = "must not contain '$$(' (HTCondor expands it when the job is matched)"
        else:
            return value
        # the message names the field, never the value: it may be a secret
        raise BackendError(f"site={self.site.name}: {field}: {problem}", field=field)


def status(ad: dict[str, Any]) -> BatchStatus:
    """Our view of one job ClassAd from condor_q or condor_history (see the table above)."""
    job_status = _number(ad, "JobStatus")
    if job_status == IDLE and _number(ad, "NumJobStarts"):
        vacate = _number(ad, "VacateReasonCode") or 0
        return BatchStatus(BatchState.ENDED, reason=_reason("Evicted", ad.get("VacateReason")),
                           outcome=VACATE_OUTCOMES.get(vacate, "preempted"))
    if job_status == IDLE:
        return BatchStatus(BatchState.PENDING)
    if job_status in (RUNNING, TRANSFERRING_OUTPUT, SUSPENDED):
        return BatchStatus(BatchState.RUNNING)
    if job_status == COMPLETED:
        if ad.get("ExitBySignal") is True:
            signal = _number(ad, "ExitSignal")
            return BatchStatus(BatchState.ENDED, exit_code=-signal if signal else None,
                               reason=f"Completed (signal {signal})", outcome="pilot_vanished")
        code = _number(ad, "ExitCode")
        return BatchStatus(BatchState.ENDED, exit_code=code,
                           reason=f"Completed (exit code {code})", outcome="pilot_vanished")
    if job_status == HELD:
        hold = _number(ad, "HoldReasonCode")
        reason = _reason("Held", ad.get("HoldReason") or f"code {hold}")
        if hold in HOLDS_PENDING:
            return BatchStatus(BatchState.PENDING, reason=reason)
        return BatchStatus(BatchState.ENDED, reason=reason,
                           outcome=HOLD_OUTCOMES.get(hold or 0, "pilot_vanished"))
    if job_status == REMOVED:
        removed = str(ad.get("RemoveReason") or "")
        if removed.startswith("The job attribute PeriodicRemove expression"):
            outcome = "preempted"  # ours is the only periodic_remove: it takes evicted pilots
        elif removed.startswith("via condor_rm"):
            outcome = "pilot_killed"
        else:
            outcome = "pilot_vanished"
        return BatchStatus(BatchState.ENDED, reason=_reason("Removed", removed),
                           outcome=outcome)
    return BatchStatus(BatchState.ENDED, reason=f"JobStatus {job_status}",
                       outcome="pilot_vanished")


def _quoted(items: Iterable[str]) -> str:
    """HTCondor's new syntax for `arguments` and `environment`."""
    raw = " ".join("'" + item.replace("'", "''") + "'" for item in items)
    return _dollars('"' + raw.replace('"', '""') + '"')


def _dollars(text: str) -> str:
    # condor_submit expands $(name), $ENV(name), ... everywhere: $(DOLLAR) is a plain $
    return text.replace("$", "$(DOLLAR)")


def _number(ad: dict[str, Any], key: str) -> int | None:
    # an attribute HTCondor could not evaluate comes as a string ("\/Expr(...)\/")
    value = ad.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reason(word: str, detail: object) -> str:
    return f"{word}: {detail}"[:_REASON_LENGTH] if detail else word
