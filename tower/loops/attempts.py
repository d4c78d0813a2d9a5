"""The life of an attempt: claimed by a pilot, kept alive by heartbeats, ended by a report
or by the monitor — and then handed to the retry policy.

Every call takes many jobs at once: the pilot API is batch-shaped. What follows an
attempt that did not succeed is `tower.retries.retry`'s business.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, model_validator
from sqlalchemy import update
from sqlmodel import Session, col, select, tuple_

from catalog.timeutil import utcnow
from pilots.payload import (
    ARGUMENTS,
    STEERING_FILES,
    STEERING_LIMIT,
    VALUE_LIMIT,
    VARIABLES,
    stage_dir,
)
from sites.config import PilotShape
from sites.schema import MAX_SECONDS, Id, Int32, Line, Strict, Text
from tower.config import TowerConfig
from tower.errors import OutsideRoot
from tower.logs import about
from tower.loops import placement
from tower.management import chains
from tower.management.specs import (
    JobPlan,
    ProductionSpec,
    job_variables,
    needs_of,
    no_fit,
    offers,
)
from tower.model import fleet, provenance, usage
from tower.model.db import bulk_insert
from tower.model.models import Attempt, Job, Output, Production
from tower.model.states import JOB_AT_SITE, JobState, move_jobs
from tower.retries import retry
from tower.retries.outcomes import Outcome
from transfer.paths import NAME_MAX, inside, name_problem

log = logging.getLogger(__name__)

#: Characters of a payload's log tail the tower keeps.
LOG_TAIL_LIMIT = 8000


class OutputReport(Strict):
    """One output as the pilot reports it. A pilot is not trusted (its payload can read its
    credential): `report` checks the name and path against what the job may produce."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    #: Where the pilot left the file in the site's storage: its attempt's stage dir.
    path: str = Field(min_length=1, max_length=4096)
    #: Bytes; Strict's bounds keep it within the database's signed 64-bit integers.
    size: int = Field(ge=0)
    adler32: str = Field(pattern=r"^[0-9a-f]{8}$")


class ContainerSeen(Strict):
    """The container an attempt ran in, as its pilot resolved and measured it."""

    runtime: Line = Field(max_length=200)
    image: Line = Field(max_length=1001)
    #: The image's path at the site (a `path` runtime's), and its digest (sha256:...).
    path: Line | None = Field(default=None, max_length=4096)
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


class Seen(Strict):
    """How the pilot ran an attempt, for its provenance record (tower.model.provenance);
    bounded like the rest of a report: a pilot is not trusted."""

    host: Line = Field(default="", max_length=255)
    command: list[Text] = Field(default_factory=list, max_length=ARGUMENTS)
    argv: list[Text] = Field(default_factory=list, max_length=2 * ARGUMENTS)
    steering: dict[Line, Text] = Field(default_factory=dict, max_length=STEERING_FILES)
    environment: dict[Line, Text] = Field(default_factory=dict, max_length=VARIABLES)
    container: ContainerSeen | None = None

    @model_validator(mode="after")
    def _sizes(self) -> Seen:
        # the pilot cuts what is longer (pilots.payload._account): more is a lie
        if any(len(text) > STEERING_LIMIT for text in self.steering.values()):
            raise ValueError(f"steering: a file over {STEERING_LIMIT} characters")
        if any(len(text) > VALUE_LIMIT for text in
               (*self.command, *self.argv, *self.environment.values(), *self.environment)):
            raise ValueError(f"an argument or environment value over {VALUE_LIMIT} "
                             "characters")
        return self


class Report(Strict):
    """What a pilot says about one ended attempt."""

    job: Id
    attempt: Id
    #: The pilot's view: finished, walltime, out_of_memory (over its memory request by more
    #: than the site's tolerance), killed (pilot got SIGTERM), cancelled, setup.
    ending: str = Field(pattern=r"^(finished|walltime|out_of_memory|killed|cancelled|setup)$")
    #: The payload's exit status; a payload ended by a signal has `signal` instead.
    exit_code: int | None = Field(default=None, ge=0, le=255)
    signal: int | None = Field(default=None, ge=1, le=128)
    reason: Line | None = Field(default=None, max_length=500)
    #: The pilot sends its last lines; the tower keeps LOG_TAIL_LIMIT characters.
    log_tail: Text = Field(default="", max_length=65536)
    outputs: list[OutputReport] = Field(default_factory=list, max_length=1000)
    #: The payload's peak resident memory (MB), measured by the pilot.
    max_rss_mb: Int32 | None = Field(default=None, ge=0)
    #: CPU seconds (user + system) of the payload's process tree, and its wall seconds.
    cpu_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS * 1024)
    wall_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    #: How it ran (pilots before provenance send none).
    provenance: Seen | None = None


@dataclass(frozen=True)
class Verdict:
    job: Id
    attempt: Id
    accepted: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "attempt": self.attempt, "accepted": self.accepted,
                "reason": self.reason}


@dataclass(frozen=True)
class Grant:
    """The answer to a claim: per job, granted with what is its own, or refused; and, by
    production name, what all its granted jobs share (command, steering and environment
    templates, outputs, container), sent once: a production's steering files may be
    large, and one claim carries many of its jobs."""

    jobs: list[dict[str, Any]]
    productions: dict[str, dict[str, Any]]


def claim(session: Session, config: TowerConfig, pilot_id: str,
          wanted: Sequence[tuple[int, int]]) -> Grant:
    """Give the pilot the jobs it may run now, with everything it needs to run them.

    A job that is not waiting for this attempt at this pilot's site (stale,
    cancelled, claimed by another pilot) is refused with the reason. So is one the
    pilot cannot hold (its cores, memory or walltime), which goes back to matching.
    A claim repeated by the pilot that holds the attempt is granted again: claiming
    is idempotent, and the pilot runs each (job, attempt) once.
    """
    pilot = fleet.require_working(session, pilot_id)
    shape = fleet.shape(pilot, config.sites)
    jobs = _jobs(session, [job_id for job_id, _ in wanted], lock=True)
    productions = _productions(session, {job.production_id for job in jobs.values()})
    answers: dict[tuple[int, int], dict[str, Any]] = {}
    eligible: list[int] = []
    misfits: list[tuple[Job, str]] = []
    for job_id, number in wanted:
        job = jobs.get(job_id)
        refusal = _refusal(job, number, pilot.site)
        if not refusal and shape is not None:
            assert job is not None
            refusal = _misfit(job, productions[job.production_id][0], shape)
            if refusal:
                misfits.append((job, refusal))
        if refusal:
            answers[(job_id, number)] = {"job": job_id, "attempt": number, "granted": False,
                                         "reason": refusal}
        else:
            eligible.append(job_id)
    _rematch(session, config, pilot_id, misfits, productions)
    # a pilot may claim before the matchmaker recorded the broker's confirmation; the rows
    # are locked, so only the states they are in need a statement
    moved = set(move_jobs(session, eligible, sorted({jobs[job_id].state for job_id in eligible}),
                          JobState.RUNNING, f"claimed by pilot {pilot_id}"))
    now = utcnow()
    bulk_insert(session, Attempt, [
        {"job_id": job_id, "number": jobs[job_id].attempt, "pilot_id": pilot_id,
         "site": pilot.site, "started_at": now, "heartbeat_at": now} for job_id in moved])
    # a claim repeated by its own pilot (its answer was lost) is granted again, the same
    moved |= _claimed_by(session, pilot_id, [key for key in answers
                                             if _current(jobs.get(key[0]), key[1])])
    # for each production that reads input data, where the site's jobs find it
    inputs = {production_id: placement.input_paths(session, config, lfns, pilot.site)
              for production_id in {jobs[job_id].production_id for job_id in moved}
              if (lfns := productions[production_id][1])}
    # a job of a production split by its inputs reads only its own files (only such
    # productions' jobs have them: the others' claims ask nothing more)
    split = [job_id for job_id in moved
             if productions[jobs[job_id].production_id][0].split is not None]
    own_inputs = {job_id: placement.input_paths(session, config, lfns, pilot.site)
                  for job_id, lfns in chains.job_lfns(session, split).items()}
    site = config.sites.get(pilot.site)
    log_bytes = site.pilot.log_bytes if site is not None else 0
    shared: dict[str, dict[str, Any]] = {}
    for job_id, number in wanted:
        if job_id in moved and _current(jobs[job_id], number):
            production_id = jobs[job_id].production_id
            spec = productions[production_id][0]
            if spec.name not in shared:
                shared[spec.name] = _shared(spec, shape)
            answers[(job_id, number)] = {
                **_payload(jobs[job_id], spec),
                "inputs": own_inputs.get(job_id) or inputs.get(production_id, []),
                "log_bytes": log_bytes}
        answers.setdefault((job_id, number), {"job": job_id, "attempt": number,
                                              "granted": False, "reason": "claimed already"})
    return Grant([answers[key] for key in wanted], shared)


def _misfit(job: Job, spec: ProductionSpec, shape: PilotShape) -> str | None:
    """Why the pilot of `shape` cannot hold `job` (grown by a retry, or a stale message
    from before sites.yaml changed), or None when it can."""
    lacking = shape.shortfall(needs_of(spec).grown(job.memory, job.walltime))
    return None if lacking is None else f"does not fit this pilot: {lacking}"


def _rematch(session: Session, config: TowerConfig, pilot_id: str,
             misfits: list[tuple[Job, str]],
             productions: dict[int, tuple[ProductionSpec, Any]]) -> None:
    """Send jobs a pilot could not hold back to matching, for a site whose pilots can;
    a job no allowed site can hold any more is held, with why (else it would go round)."""
    for job, refusal in misfits:
        assert job.id is not None
        spec = productions[job.production_id][0]
        stuck = no_fit(needs_of(spec).grown(job.memory, job.walltime),
                       offers(spec, config.sites, only_site=job.only_site))
        reason = f"refused by pilot {pilot_id}: {refusal}"
        if stuck is None:
            move_jobs(session, [job.id], list(JOB_AT_SITE), JobState.DEFINED, reason,
                      site=None, message=reason[:500])
            continue
        reason = f"{reason}; it fits no allowed site ({stuck[1]}): held"[:500]
        if move_jobs(session, [job.id], list(JOB_AT_SITE), JobState.HELD, reason,
                     message=reason):
            retry.record_action(session, [job.id], "tower", "hold", reason)


def _current(job: Job | None, number: int) -> bool:
    return job is not None and job.attempt == number


def _claimed_by(session: Session, pilot_id: str, keys: list[tuple[int, int]]) -> set[int]:
    """The jobs among `keys` whose attempt runs at `pilot_id` and has not ended."""
    if not keys:
        return set()
    return set(session.exec(select(Attempt.job_id).where(
        tuple_(Attempt.job_id, Attempt.number).in_(keys), Attempt.pilot_id == pilot_id,
        col(Attempt.ended_at).is_(None))).all())


def _refusal(job: Job | None, number: int, site: str) -> str | None:
    if job is None:
        return "no such job"
    if job.attempt != number:
        return f"stale: the job is on attempt {job.attempt}"
    if job.state not in (JobState.QUEUED, JobState.ASSIGNED):
        return f"the job is {job.state}"
    if job.site != site:
        return f"the job is assigned to site {job.site}"
    return None


def _jobs(session: Session, job_ids: Sequence[int], lock: bool = False) -> dict[int, Job]:
    if not job_ids:
        return {}
    query = select(Job).where(col(Job.id).in_(job_ids))
    rows = session.exec(query.with_for_update() if lock else query).all()
    return {job.id: job for job in rows if job.id is not None}


def _productions(session: Session, production_ids: set[int]
                 ) -> dict[int, tuple[ProductionSpec, Any]]:
    """Each production's spec and the input files it reads, in one query; kept for the
    transaction, so a claim that carries reports reads and validates them once."""
    known: dict[int, tuple[ProductionSpec, Any]] = session.info.setdefault("productions", {})
    missing = production_ids - known.keys()
    if missing:
        rows = session.exec(select(Production.id, Production.spec, Production.inputs).where(
            col(Production.id).in_(missing))).all()
        known.update({production_id: (ProductionSpec.model_validate(spec), inputs)
                      for production_id, spec, inputs in rows if production_id is not None})
    return {production_id: known[production_id] for production_id in production_ids
            if production_id in known}


def _payload(job: Job, spec: ProductionSpec) -> dict[str, Any]:
    """A granted job's own part of the claim's answer."""
    plan = JobPlan(job.index, job.seed, job.first_event, job.events)
    needs = needs_of(spec).grown(job.memory, job.walltime)
    return {
        "job": job.id, "attempt": job.attempt, "granted": True, "production": spec.name,
        "variables": job_variables(spec, plan, job.attempt), "walltime": needs.walltime,
        "cores": needs.cores, "memory": needs.memory,
    }


def _shared(spec: ProductionSpec, shape: PilotShape | None) -> dict[str, Any]:
    """What all granted jobs of `spec` share in a claim's answer (Grant)."""
    shared = {"command": spec.command, "steering": spec.steering,
              "environment": spec.environment, "outputs": spec.outputs}
    if spec.container is not None:
        shared["container"] = container_of(spec, shape)
    return shared


def container_of(spec: ProductionSpec, shape: PilotShape | None) -> dict[str, Any]:
    """What a pilot needs to run a job of `spec` in its container: the image, and the site's
    template of its runtime (none, when the site offers it no longer: the pilot then
    ends the attempt as `setup`)."""
    assert spec.container is not None
    containers = shape.containers if shape is not None else None
    return {"image": spec.container.image, "runtime": spec.container.runtime,
            "images": containers.images if containers else None,
            "template": containers.runtimes.get(spec.container.runtime) if containers
            else None}


def heartbeat(session: Session, pilot_id: str,
              running: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Record that the pilot runs these attempts; return those it should stop.

    An attempt to stop is one the tower no longer counts as running there:
    lost to the monitor, or its job cancelled.
    """
    fleet.require_working(session, pilot_id)
    fleet.beat(session, pilot_id)
    if not running:
        return []
    keys = [tuple_(Attempt.job_id, Attempt.number).in_(list(running))]
    session.execute(update(Attempt).where(
        *keys, col(Attempt.pilot_id) == pilot_id, col(Attempt.ended_at).is_(None),
    ).values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
    alive = session.exec(
        select(Attempt.job_id, Attempt.number).join(Job, col(Job.id) == Attempt.job_id).where(
            *keys, Attempt.pilot_id == pilot_id, col(Attempt.ended_at).is_(None),
            Job.state == JobState.RUNNING)).all()
    return sorted(set(running) - {(row[0], row[1]) for row in alive})


def report(session: Session, config: TowerConfig, pilot_id: str,
           reports: Sequence[Report]) -> list[Verdict]:
    """End the attempts the pilot reports; a report for an attempt it does not hold is refused.

    The batch costs a fixed number of statements, not a few per report: the attempts and
    jobs are read at once, and the successes move on together."""
    pilot = fleet.require_working(session, pilot_id)
    site = config.sites.get(pilot.site)
    open_attempts = _open_attempts(session, pilot_id, [(item.job, item.attempt)
                                                       for item in reports])
    jobs = _jobs(session, [item.job for item in reports if (item.job, item.attempt)
                           in open_attempts])
    productions = _productions(session, {job.production_id for job in jobs.values()})
    specs = {production_id: spec for production_id, (spec, _) in productions.items()}
    # each production's spec as its attempts' provenance records hold it, made once a batch
    dumped = {production_id: spec.model_dump(mode="json") for production_id, spec in
              specs.items()} if any(item.provenance for item in reports) else {}
    inputs = {production_id: provenance.inputs_of(session, lfns or [])
              for production_id, (_, lfns) in productions.items()}
    records: list[dict[str, Any]] = []
    verdicts = []
    succeeded: list[tuple[Job, Report]] = []
    used: list[dict[str, Any]] = []
    for item in reports:
        # popped: the same attempt twice in one batch is ended once
        attempt = open_attempts.pop((item.job, item.attempt), None)
        if attempt is None:
            verdicts.append(Verdict(item.job, item.attempt, False,
                                    "no running attempt of this pilot (lost, or reported already)"))
            continue
        job = jobs[item.job]
        spec = specs[job.production_id]
        problem = output_problem(item, spec, site.storage if site else None,
                                 local=site is not None and site.ssh is None)
        if problem:
            # a lying pilot, or a payload that made names no production may use: nothing of
            # it is staged, and the attempt ends now (the payload's fault, not the site's)
            log.warning("pilot=%s report refused: %s", pilot_id, problem,
                        extra=about(spec.name, item.job, item.attempt))
            outcome, reason = Outcome.MISSING_OUTPUT, f"report refused: {problem}"
        else:
            outcome, reason = classify(item, spec)
        _end(session, attempt, outcome, reason, item)
        if item.provenance is not None:
            records.append(_record(job, spec, dumped[job.production_id], attempt,
                                   item.provenance, inputs[job.production_id]))
        if outcome is Outcome.SUCCESS:
            succeeded.append((job, item))
            used.append(_usage(job, spec, attempt, item))
        else:
            retry.settle(session, config, job, spec, attempt)
        verdicts.append(Verdict(item.job, item.attempt, problem is None,
                                f"refused: {problem}" if problem else str(outcome)))
    _move_succeeded(session, succeeded)
    usage.record(session, used)
    provenance.save(session, records)
    return verdicts


def _record(job: Job, spec: ProductionSpec, dumped: dict[str, Any], attempt: Attempt,
            seen: Seen, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance row of an ended attempt; `dumped` is `spec` as JSON."""
    plan = JobPlan(job.index, job.seed, job.first_event, job.events)
    record = provenance.build(
        dumped,
        {"index": job.index, "seed": job.seed, "first_event": job.first_event,
         "events": job.events},
        job_variables(spec, plan, attempt.number), attempt.number,
        {"site": attempt.site, "pilot": attempt.pilot_id}, seen.model_dump(mode="json"),
        inputs)
    return {"job_id": job.id, "attempt": attempt.number,
            "production_id": job.production_id, "record": record}


def _usage(job: Job, spec: ProductionSpec, attempt: Attempt, item: Report) -> dict[str, Any]:
    """What a successful attempt used, for tower.model.usage. A pilot that does not measure
    wall time leaves the attempt's span at the tower (claim to report) in its place."""
    assert attempt.ended_at is not None
    wall = item.wall_seconds
    if wall is None:
        wall = max(0.0, (attempt.ended_at - attempt.started_at).total_seconds())
    return {"production_id": job.production_id, "job_id": job.id, "attempt": item.attempt,
            "site": attempt.site, "events": job.events, "cores": spec.cores,
            "max_rss_mb": item.max_rss_mb, "cpu_seconds": item.cpu_seconds,
            "wall_seconds": wall, "at": attempt.ended_at}


def output_problem(item: Report, spec: ProductionSpec, storage: str | None,
                   local: bool) -> str | None:
    """What is wrong with the outputs a pilot reports, naming the field, or None.

    Each must be a plain file name matching one of the production's output patterns, at
    exactly `stage_dir/NAME` of this attempt in its site's storage; at a site whose storage
    the tower reads in place (`local`), the file must not be a link leading out of there.
    """
    seen: set[str] = set()
    for index, output in enumerate(item.outputs):
        field = f"outputs[{index}]"
        why = name_problem(output.name)
        if why:
            return f"{field}.name: {_quoted(output.name)}: {why}"
        if not any(fnmatch.fnmatchcase(output.name, pattern) for pattern in spec.outputs):
            return f"{field}.name: {_quoted(output.name)} matches none of the production's outputs"
        if output.name in seen:
            return f"{field}.name: {_quoted(output.name)} reported twice"
        seen.add(output.name)
        if storage is None:
            return f"{field}.path: the pilot's site has no storage in this tower's sites"
        folder = stage_dir(PurePosixPath(storage), spec.name, item.job, item.attempt)
        expected = str(folder / output.name)
        if output.path != expected:
            return (f"{field}.path: {_quoted(output.path)} is not {expected!r} in the "
                    "attempt's stage dir")
        if local:
            try:
                inside(Path(folder), output.name, f"{field}.path")
            except OutsideRoot as exc:
                return str(exc)
    return None


def _open_attempts(session: Session, pilot_id: str, keys: list[tuple[int, int]]
                   ) -> dict[tuple[int, int], Attempt]:
    """The attempts among `keys` that run at `pilot_id` and have not ended, locked."""
    if not keys:
        return {}
    rows = session.exec(select(Attempt).where(
        tuple_(Attempt.job_id, Attempt.number).in_(keys), Attempt.pilot_id == pilot_id,
        col(Attempt.ended_at).is_(None)).with_for_update()).all()
    return {(row.job_id, row.number): row for row in rows}


def _quoted(text: str, limit: int = 100) -> str:
    """A caller's string as a message shows it: escaped, and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def classify(item: Report, spec: ProductionSpec) -> tuple[Outcome, str]:
    """The outcome class of a reported attempt, and why."""
    if item.ending == "walltime":
        return Outcome.WALLTIME, f"ran past its walltime of {spec.walltime}s"
    if item.ending == "out_of_memory":
        return Outcome.OUT_OF_MEMORY, item.reason or "over its memory request"
    if item.ending == "killed":
        return Outcome.PILOT_KILLED, item.reason or "the pilot was told to stop"
    if item.ending == "cancelled":
        return Outcome.CANCELLED, "cancelled while running"
    if item.ending == "setup":
        return Outcome.SETUP, item.reason or "the pilot could not prepare the job"
    if item.signal:
        return Outcome.SIGNAL, f"killed by signal {item.signal}"
    if item.exit_code:
        return Outcome.EXIT_CODE, f"exit code {item.exit_code}"
    names = [output.name for output in item.outputs]
    for pattern in spec.outputs:
        if not fnmatch.filter(names, pattern):
            return Outcome.MISSING_OUTPUT, f"no output matches {pattern!r}"
    return Outcome.SUCCESS, "finished"


def _end(session: Session, attempt: Attempt, outcome: Outcome, reason: str,
         item: Report) -> None:
    attempt.exit_code = item.exit_code
    attempt.signal = item.signal
    attempt.max_rss_mb = item.max_rss_mb
    attempt.cpu_seconds = item.cpu_seconds
    attempt.wall_seconds = item.wall_seconds
    retry.end_attempt(session, attempt, outcome, reason)
    attempt.log_tail = item.log_tail[-LOG_TAIL_LIMIT:]


def _move_succeeded(session: Session, succeeded: list[tuple[Job, Report]]) -> None:
    """Move succeeded jobs to staging with their outputs; those without outputs are done.
    A job cancelled meanwhile does not move: its outputs are not wanted."""
    staged = [job.id for job, item in succeeded if item.outputs]
    moved = set(move_jobs(session, staged, JobState.RUNNING,  # type: ignore[arg-type]
                          JobState.STAGING, "attempt succeeded")) if staged else set()
    bulk_insert(session, Output, [
        {"job_id": job.id, "attempt": item.attempt, "name": output.name,
         "source": output.path, "size": output.size, "adler32": output.adler32}
        for job, item in succeeded if job.id in moved for output in item.outputs])
    bare = [job.id for job, item in succeeded if not item.outputs]
    if bare:
        move_jobs(session, bare, JobState.RUNNING, JobState.DONE,  # type: ignore[arg-type]
                  "attempt succeeded, no outputs to stage")
