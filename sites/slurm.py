"""The `slurm` batch system: pilots as SLURM batch jobs, through the site's runner.

A pilot is a batch script piped to `sbatch --parsable`: `#SBATCH` lines from
the site's config, the pilot's secrets exported, the admin's setup lines, then
`exec` of the pilot's argv. Every value that reaches the script is quoted with
shlex or refused (a newline in a `#SBATCH` value would be a new line of
script), and the script travels on stdin, never on a command line.

Status comes from `squeue`; a job squeue no longer lists is looked up in
`sacct` where accounting runs, else in `scontrol show job` (which remembers a
job for MinJobAge after it ended).

| SLURM state                                   | pilot   | outcome of its unfinished attempts |
|-----------------------------------------------|---------|------------------------------------|
| PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, REQUEUE_FED, RESV_DEL_HOLD | pending | |
| RUNNING, COMPLETING, STAGE_OUT, SIGNALING, RESIZING, SUSPENDED, STOPPED | running | |
| COMPLETED, FAILED                             | ended   | pilot_vanished                     |
| TIMEOUT, DEADLINE                             | ended   | pilot_killed (its own walltime)    |
| PREEMPTED                                     | ended   | preempted                          |
| NODE_FAIL, BOOT_FAIL                          | ended   | node_failure                       |
| OUT_OF_MEMORY                                 | ended   | out_of_memory                      |
| CANCELLED, REVOKED, SPECIAL_EXIT              | ended   | pilot_killed                       |
"""

from __future__ import annotations

import re
import shlex

from pydantic import Field, field_validator

from sites.batch import BatchState, BatchStatus, PilotRequest, Probe
from sites.commanded import CommandedBatch
from sites.errors import BackendError
from sites.schema import Strict

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
           "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED",
           "STOPPED"}
#: Ended states -> the outcome class of the attempts the pilot left unfinished.
OUTCOMES = {
    "COMPLETED": "pilot_vanished", "FAILED": "pilot_vanished",
    "TIMEOUT": "pilot_killed", "DEADLINE": "pilot_killed",
    "PREEMPTED": "preempted",
    "NODE_FAIL": "node_failure", "BOOT_FAIL": "node_failure",
    "OUT_OF_MEMORY": "out_of_memory",
    "CANCELLED": "pilot_killed", "REVOKED": "pilot_killed", "SPECIAL_EXIT": "pilot_killed",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A partition, account, QOS or reservation: SLURM names, comma-separated. sbatch splits an
#: #SBATCH line at white space, so "regular --uid=0" would be two options.
_NAMES = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
#: A constraint expression (features with & | , * [ ] and counts), without white space.
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,&|*!:\[\]()+-]+")


def _plain(value: str) -> str:
    # an #SBATCH line is read up to its end: a newline would start a new line of script
    if _CONTROL.search(value):
        raise ValueError("must not contain newlines or other control characters")
    return value


def _one_word(value: str) -> str:
    # sbatch reads every word of an #SBATCH line as an option of its own
    if not _plain(value) or any(char.isspace() for char in value):
        raise ValueError("must be one word: sbatch would read a second word as an option")
    return value


class SlurmOptions(Strict):
    """`batch_options` of a SLURM site."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    #: More sbatch options, one per item, e.g. "--licenses=scratch" or "--gpus=1".
    extra: list[str] = Field(default_factory=list)
    #: Where pilot logs go at the site; default: SCRATCH/pilot-logs.
    log_dir: str | None = None
    #: The script's interpreter.
    shell: str = "/bin/bash"

    @field_validator("partition", "account", "qos", "reservation")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not _NAMES.fullmatch(value):
            raise ValueError(f"{value!r}: expected SLURM names (letters, digits, _ . + -), "
                             "comma-separated")
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None and not _CONSTRAINT.fullmatch(value):
            raise ValueError(f"{value!r}: expected features joined by & | , (no spaces)")
        return value

    @field_validator("log_dir")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        return None if value is None else _one_word(value)

    @field_validator("shell")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return _plain(value)

    @field_validator("extra")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _one_word(item).startswith("-"):
                raise ValueError(f"{item!r}: each item is one sbatch option, starting with -")
        return value


class SlurmBatch(CommandedBatch):
    """Implements `BatchSystem` with sbatch, squeue, sacct/scontrol and scancel."""

    options_model = SlurmOptions
    #: Whether sacct answers here; learnt from its first refusal.
    _accounting = True


    def probes(self) -> list[Probe]:
        # squeue asks the controller: it proves the cluster answers and authenticates us
        return [Probe(f"command {argv[0]}", argv) for argv in (
            ["sbatch", "--version"], ["squeue", "--noheader", "--me"], ["scancel", "--version"])]

    def script(self, request: PilotRequest) -> str:
        """The batch script of one pilot."""
        shape = self.site.pilot
        directives = [
            f"--job-name=gridtower-{self.site.name}-{request.pilot_id[:12]}",
            f"--time={_minutes(shape.walltime)}",
            "--nodes=1", "--ntasks=1", f"--cpus-per-task={shape.cores}",
            f"--output={self.log_path(request.pilot_id)}",
            *([f"--mem={int(shape.memory)}M"] if shape.memory else []),
            *(f"--{key}={value}" for key, value in (
                ("partition", self.options.partition), ("account", self.options.account),
                ("qos", self.options.qos), ("constraint", self.options.constraint),
                ("reservation", self.options.reservation)) if value),
            *self.options.extra,
        ]
        lines = [f"#!{self.options.shell}", *(f"#SBATCH {_plain(d)}" for d in directives)]
        for name, value in request.environment.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise BackendError(f"environment variable name {name!r} is not a shell name")
            lines.append(f"export {name}={shlex.quote(value)}")
        # the admin's setup lines are shell by intent (module load, a container wrapper)
        lines += self.site.setup
        lines.append(f"exec {shlex.join(request.argv)}")
        return "\n".join(lines) + "\n"

    def submit(self, request: PilotRequest) -> str:
        self._prepare()
        done = self._checked(["sbatch", "--parsable"], input=self.script(request))
        batch_id = done.stdout.strip().split(";", 1)[0]  # "ID" or "ID;cluster"
        if not batch_id.isdigit():
            raise BackendError(f"site={self.site.name}: sbatch answered {done.stdout!r}, "
                               "not a job id")
        return batch_id

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        if not batch_ids:
            return {}
        found = self._squeue(batch_ids)
        missing = [batch_id for batch_id in batch_ids if batch_id not in found]
        if missing:
            found.update(self._sacct(missing) or self._scontrol(missing))
        return {batch_id: found.get(batch_id) or BatchStatus(
                    BatchState.ENDED, reason="unknown to squeue, sacct and scontrol",
                    outcome="pilot_vanished")
                for batch_id in batch_ids}

    def cancel(self, batch_ids: list[str]) -> None:
        if batch_ids:
            # scancel sends SIGTERM, and SIGKILL after the cluster's KillWait
            self._checked(["scancel", "--", *batch_ids])

    def _squeue(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        done = self.runner.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r",
                                f"--jobs={','.join(batch_ids)}"])
        if done.code != 0:
            if "Invalid job id" in done.stderr:
                return {}  # none of them is in the queue any more
            raise self._error("squeue", done)
        found = {}
        for line in done.stdout.splitlines():
            batch_id, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            found[batch_id] = status(state, reason=reason)
        return found

    def _sacct(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        if not self._accounting:
            return {}
        done = self.runner.run(["sacct", "--noheader", "--parsable2", "--allocations",
                                "--format=JobID,State,ExitCode", f"--jobs={','.join(batch_ids)}"])
        if done.code != 0:
            # no accounting at this site: ask scontrol from now on
            self._accounting = False
            return {}
        found = {}
        for line in done.stdout.splitlines():
            batch_id, state, exit_code = (line.split("|") + ["", ""])[:3]
            found[batch_id] = status(state, _exit_code(exit_code))
        return found

    def _scontrol(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        """Jobs the controller still remembers (for MinJobAge after they ended): one call,
        every job on a line of its own."""
        done = self.runner.run(["scontrol", "--oneliner", "show", "job"])
        if done.code != 0:
            raise self._error("scontrol", done)
        wanted = set(batch_ids)
        found = {}
        for line in done.stdout.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("JobId") in wanted:
                found[fields["JobId"]] = status(fields.get("JobState", ""),
                                                _exit_code(fields.get("ExitCode", "")),
                                                fields.get("Reason", ""))
        return found


def _exit_code(text: str) -> int | None:
    """SLURM's "CODE:SIGNAL" exit code; None when it has none."""
    code, _, _ = text.partition(":")
    return int(code) if code.isdigit() else None


def status(state: str, exit_code: int | None = None, reason: str = "") -> BatchStatus:
    """Our view of a SLURM state ("CANCELLED by 0" is CANCELLED)."""
    word = state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"
    if word in PENDING:
        return BatchStatus(BatchState.PENDING, reason=reason if reason != "None" else None)
    if word in RUNNING:
        return BatchStatus(BatchState.RUNNING)
    return BatchStatus(BatchState.ENDED, exit_code=exit_code, reason=word,
                       outcome=OUTCOMES.get(word, "pilot_vanished"))


def _minutes(seconds: float) -> str:
    """SLURM's --time as D-HH:MM:SS, rounded up to whole minutes."""
    minutes = max(1, -(-int(seconds) // 60))
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"
