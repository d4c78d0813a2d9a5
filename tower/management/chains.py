"""Productions split by their inputs, and chains: jobs made from input files as they are
cataloged good, each file consumed once; what follows when a consumed file changes; the
checks of a chain at submit; the steps of a chain and their progress.

A production with `split` gets no jobs from its events: `feed` makes one job per group of
input files, from its datasets or LFNs at once and from an upstream production's outputs
as each is cataloged good (a good replica). Which job reads which file is a `job_input`
row, unique per production and file, written with the job in one transaction: a file is
never consumed twice, whatever crashed or ran twice.

When a consumed file changes (a newer attempt of its upstream job superseded it, or it has
no good replica left), `revisit` settles the job made from it:
- a job that has not yet made output and waits for a site or runs is cancelled and its
  files freed: `feed` makes a new job of them once they are good again;
- a job still `defined` keeps its place and reads the file as it is now;
- a job that made output (staging, done, or cataloged files) is held with the reason:
  its outputs came from the old file, and a person decides (`tower release` redoes it
  with the new file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Dataset, Replica, ReplicaState
from pilots.rendering import TemplateProblem, render
from tower.errors import SpecError
from tower.management.progress import upstream_of
from tower.management.specs import (
    InputSource,
    ProductionSpec,
    Resolved,
    SplitSpec,
    seed_for,
    templates,
    trial_variables,
)
from tower.model import tally
from tower.model.db import among, bulk_insert
from tower.model.models import Job, JobInput, Production
from tower.model.states import JOB_TERMINAL, JobState, ProductionState, move_jobs

#: Input files one production takes in one cycle: a 10^5-file dataset is consumed over
#: several cycles, each a bounded transaction.
FEED_LIMIT = 10_000
#: The longest chain of steps (a production reading one that reads one ...).
MAX_STEPS = 50
#: Job states in which a job made from a changed file has made no output yet and is
#: cancelled (and its files freed).
REMADE = [JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING]
#: States of the jobs `revisit` looks at: a failed, cancelled or held job waits for a person.
REVISITED = [JobState.DEFINED, *REMADE, JobState.STAGING, JobState.DONE]
#: States of a production that will make no more jobs.
CLOSED = {ProductionState.CANCELLED, ProductionState.REJECTED}


def is_split(spec: Mapping[str, Any] | ProductionSpec) -> bool:
    return (spec.split if isinstance(spec, ProductionSpec) else spec.get("split")) is not None


# -- submit: the inputs of a request, and a chain checked whole ---------------------------


def check_sources(session: Session, spec: ProductionSpec, where: str,
                  planned: Mapping[str, ProductionSpec]) -> None:
    """Each upstream production of `spec` is in the same file (`planned`) or the database,
    and is not `spec` itself."""
    for position, source in spec.upstream:
        field = f"inputs[{position}].production"
        if source.production == spec.name:
            raise SpecError(f"{where}: {field}: a production cannot read its own outputs",
                            field=field)
        if source.production not in planned and _stored_spec(session,
                                                             source.production) is None:
            raise SpecError(f"{where}: {field}: no production named {source.production!r} "
                            "in this file or in the database", field=field)


def _check_patterns(session: Session, spec: ProductionSpec, where: str,
                    planned: Mapping[str, ProductionSpec]) -> None:
    """Each upstream entry's pattern matches a file its production makes."""
    for position, source in spec.upstream:
        upstream = planned.get(source.production) or _stored_spec(session, source.production)
        assert upstream is not None  # check_sources said so
        if not any(fnmatchcase(name, source.outputs) for name in trial_names(upstream)):
            raise SpecError(
                f"{where}: inputs[{position}].outputs: {source.outputs!r} matches none of "
                f"production {source.production}'s outputs "
                f"({', '.join(upstream.outputs) or 'none'})",
                field=f"inputs[{position}].outputs")


def check_chain(session: Session, plans: Sequence[Resolved], source: str) -> None:
    """A file's requests as one chain: every step they read exists, no cycle, no chain
    longer than MAX_STEPS, and each step's templates rendered for a trial job reading the
    files the step before it would produce. Raises SpecError naming the step and field."""
    planned = {item.spec.name: item.spec for item in plans}
    for check in (check_sources, _steps_above, _check_patterns, _render_trial):
        for item in plans:
            check(session, item.spec, f"{source}: production {item.spec.name}", planned)


def _steps_above(session: Session, spec: ProductionSpec, where: str,
                 planned: Mapping[str, ProductionSpec]) -> None:
    """Follow the steps `spec` reads up to their generators: no step reads itself through
    others, and no chain is longer than MAX_STEPS."""
    cleared: set[str] = set()

    def up(step: ProductionSpec, path: tuple[str, ...]) -> None:
        if len(path) > MAX_STEPS:
            raise SpecError(f"{where}: inputs: a chain of more than {MAX_STEPS} steps",
                            field="inputs")
        for _, source in step.upstream:
            if source.production in path:
                cycle = " <- ".join((*path[path.index(source.production):], source.production))
                raise SpecError(f"{where}: inputs: chain cycle: {cycle}", field="inputs")
            upstream = planned.get(source.production) or _stored_spec(session,
                                                                      source.production)
            if upstream is not None and source.production not in cleared:
                up(upstream, (*path, source.production))
                cleared.add(source.production)

    up(spec, (spec.name,))


def trial_names(spec: ProductionSpec) -> list[str]:
    """The file names a production's first job would produce, as far as its output
    patterns say (a wildcard stands for `0`)."""
    return [re.sub(r"[*?]", "0", pattern).rsplit("/", 1)[-1]
            for pattern in spec.outputs]


def trial_inputs(session: Session, spec: ProductionSpec,
                 planned: Mapping[str, ProductionSpec]) -> list[str] | None:
    """The names of the files a first job of a chained step would read: those its
    upstream steps' first jobs would produce (None for a production not chained)."""
    if not spec.upstream:
        return None
    names: list[str] = []
    for _, source in spec.upstream:
        upstream = planned.get(source.production) or _stored_spec(session, source.production)
        if upstream is not None:
            names += [name for name in trial_names(upstream)
                      if fnmatchcase(name, source.outputs)]
    return names[:spec.split.files_per_job or 1] if spec.split else names


def _render_trial(session: Session, spec: ProductionSpec, where: str,
                  planned: Mapping[str, ProductionSpec]) -> None:
    variables = trial_variables(spec, trial_inputs(session, spec, planned))
    for field, text in templates(spec):
        try:
            render(text, variables)
        except TemplateProblem as exc:
            raise SpecError(f"{where}: {field}: {exc}", field=field) from exc


def describe_split(spec: ProductionSpec) -> str:
    """How a production split by its inputs makes its jobs, in words."""
    assert spec.split is not None
    rule = ("file" if spec.split.files_per_job == 1
            else f"{spec.split.files_per_job} files" if spec.split.files_per_job
            else f"{spec.split.events_per_job} events of files")
    sources = ", ".join(f"{entry.production}'s {entry.outputs}"
                        if isinstance(entry, InputSource) else entry for entry in spec.inputs)
    return f"a job per {rule} of {sources}"


def _stored_spec(session: Session, name: str) -> ProductionSpec | None:
    stored = session.exec(select(Production.spec).where(Production.name == name)).first()
    return None if stored is None else ProductionSpec.model_validate(stored)


def static_files(session: Session, spec: ProductionSpec, where: str) -> None:
    """The datasets and LFNs a split production reads exist, and carry event counts if it
    is split by events."""
    for position, entry in enumerate(spec.inputs):
        if isinstance(entry, InputSource):
            continue
        rows = session.exec(select(func.count(), func.count(col(CatalogFile.events)))
                            .select_from(CatalogFile).where(_static(entry))).one()
        if not rows[0]:
            raise SpecError(f"{where}: inputs[{position}]: the catalog holds no file or "
                            f"dataset {entry!r}", field=f"inputs[{position}]")
        if spec.split is not None and spec.split.events_per_job and rows[1] < rows[0]:
            raise SpecError(f"{where}: split.events_per_job: {rows[0] - rows[1]} files of "
                            f"{entry!r} carry no event count", field="split.events_per_job")


def _static(entry: str) -> Any:
    if entry.startswith("/"):
        return col(CatalogFile.lfn) == entry
    return col(CatalogFile.dataset_id).in_(select(Dataset.id).where(Dataset.name == entry))


# -- the loop: jobs made as files arrive -----------------------------------------------------


def feed_all(session: Session) -> int:
    """For every runnable production split by its inputs: settle the jobs whose files
    changed, then make jobs of the files not yet consumed. Returns the jobs made."""
    made = 0
    for production in session.exec(select(Production).where(
            col(Production.state).in_([ProductionState.ACTIVE]))).all():
        if is_split(production.spec):
            revisit(session, production)
            made += feed(session, production)
    return made


def feed(session: Session, production: Production) -> int:
    """Make the jobs of `production` from its input files not yet consumed; a last group
    smaller than the split asks only once no more files can come. Returns the jobs made."""
    # the production's row is the lock: two tower processes never feed it at once
    session.exec(select(Production.id).where(Production.id == production.id)
                 .with_for_update()).one()
    spec = ProductionSpec.model_validate(production.spec)
    assert spec.split is not None and production.id is not None
    files = unconsumed(session, production, spec)
    groups = group(files, spec.split, final=sources_ended(session, spec)
                   and len(files) < FEED_LIMIT)
    if not groups:
        return 0
    last = session.exec(select(func.max(Job.index)).where(
        Job.production_id == production.id)).one()
    first = 0 if last is None else last + 1
    rows = [{"production_id": production.id, "index": first + n,
             "seed": seed_for(spec, first + n), "first_event": 0,
             "events": sum(row.events or 0 for row in members), "state": JobState.DEFINED,
             "priority": spec.priority, "queue": spec.queue, "attempt": 0}
            for n, members in enumerate(groups)]
    bulk_insert(session, Job, rows)
    ids = dict(session.exec(select(Job.index, Job.id).where(
        Job.production_id == production.id, col(Job.index) >= first)).all())
    bulk_insert(session, JobInput, [
        {"production_id": production.id, "job_id": ids[first + n], "file_id": row.id,
         "lfn": row.lfn, "adler32": row.adler32, "attempt": row.attempt}
        for n, members in enumerate(groups) for row in members])
    events = sum(int(row["events"]) for row in rows)
    tally.jobs_added(session, production.id, len(rows), events)
    session.execute(update(Production).where(col(Production.id) == production.id).values(
        events_total=Production.events_total + events))
    return len(rows)


def group(files: Sequence[Any], rule: SplitSpec, final: bool) -> list[list[Any]]:
    """`files` in groups by `rule`; the last, smaller group only if `final`."""
    groups: list[list[Any]] = []
    current: list[Any] = []
    for row in files:
        current.append(row)
        full = (len(current) >= rule.files_per_job if rule.files_per_job
                else sum(item.events or 0 for item in current) >= (rule.events_per_job or 0))
        if full:
            groups.append(current)
            current = []
    if current and final:
        groups.append(current)
    return groups


def unconsumed(session: Session, production: Production, spec: ProductionSpec,
               limit: int = FEED_LIMIT) -> list[Any]:
    """The good input files of `production` no job of it reads yet, oldest first."""
    wanted = []
    for entry in spec.inputs:
        if isinstance(entry, InputSource):
            dataset = session.exec(select(Production.dataset).where(
                Production.name == entry.production)).first()
            wanted.append(and_(col(CatalogFile.dataset_id).in_(
                select(Dataset.id).where(Dataset.name == dataset)), _like(entry.outputs)))
        else:
            wanted.append(_static(entry))
    rows = session.execute(
        sa_select(col(CatalogFile.id), col(CatalogFile.lfn), col(CatalogFile.name),
                  col(CatalogFile.adler32), col(CatalogFile.attempt), col(CatalogFile.events))
        .where(or_(*wanted), _good(),
               ~exists().where(col(JobInput.production_id) == production.id,
                               col(JobInput.file_id) == CatalogFile.id))
        .order_by(col(CatalogFile.id)).limit(limit)).all()
    return list(rows)


def _like(pattern: str) -> Any:
    """The names a glob of `*` and `?` (InputSource.outputs) matches, as SQL LIKE."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return col(CatalogFile.name).like(escaped.replace("*", "%").replace("?", "_"),
                                      escape="\\")


def _good() -> Any:
    return exists().where(col(Replica.file_id) == CatalogFile.id,
                          col(Replica.state) == ReplicaState.GOOD)


def sources_ended(session: Session, spec: ProductionSpec, depth: int = 0) -> bool:
    """Whether no more input files can come: every upstream production has ended."""
    return all(ended(session, source.production, depth + 1) for _, source in spec.upstream)


def ended(session: Session, name: str, depth: int = 0) -> bool:
    """Whether production `name` makes no more files: closed, or all its jobs made and
    ended (for one split by inputs: its sources ended and every file consumed)."""
    production = session.exec(select(Production).where(Production.name == name)).first()
    if production is None or production.state in CLOSED or depth > MAX_STEPS:
        return True
    if not production.full_run or production.state == ProductionState.REQUESTED:
        return False
    states = tally.counts(session, production.id).get(production.id or 0, {})
    if any(state not in JOB_TERMINAL and count.jobs for state, count in states.items()):
        return False
    return not is_split(production.spec) or fed(session, production, depth)


def fed(session: Session, production: Production, depth: int = 0) -> bool:
    """Whether a production split by inputs will make no more jobs: its sources ended and
    it consumed every file."""
    spec = ProductionSpec.model_validate(production.spec)
    return sources_ended(session, spec, depth) and not unconsumed(session, production, spec,
                                                                  limit=1)


def waiting(session: Session) -> int:
    """Active productions split by inputs that may still make jobs (`tower run
    --until-done` waits for them)."""
    return sum(1 for production in session.exec(select(Production).where(
        Production.state == ProductionState.ACTIVE)).all()
        if is_split(production.spec) and not fed(session, production))


def revisit(session: Session, production: Production) -> None:
    """Settle the jobs of `production` made from files that changed since (module
    docstring)."""
    changed = session.execute(
        sa_select(col(JobInput.job_id), col(JobInput.lfn), col(Job.state),
                  col(CatalogFile.attempt), col(CatalogFile.adler32))
        .join(CatalogFile, col(CatalogFile.id) == JobInput.file_id)
        .join(Job, col(Job.id) == JobInput.job_id)
        .where(col(JobInput.production_id) == production.id,
               col(Job.state).in_(REVISITED),
               or_(col(JobInput.attempt) != CatalogFile.attempt,
                   col(JobInput.adler32) != CatalogFile.adler32, ~_good()))).all()
    if not changed:
        return
    made_output = set(session.exec(select(CatalogFile.job_id).where(
        col(CatalogFile.job_id).in_({row.job_id for row in changed}))).all())
    why: dict[int, str] = {}
    for row in changed:
        why.setdefault(row.job_id, f"input {row.lfn} changed (now attempt {row.attempt}, "
                                   f"adler32 {row.adler32})")
    for job_id, reason in why.items():
        state = next(row.state for row in changed if row.job_id == job_id)
        if state in (JobState.STAGING, JobState.DONE) or job_id in made_output:
            message = f"{reason} after this job made its outputs: held"
            move_jobs(session, [job_id], [JobState(state)], JobState.HELD, message,
                      message=message[:500])
        elif state == JobState.DEFINED:
            _read_as_now(session, job_id)
        else:
            message = f"{reason}: cancelled, a new job reads it"
            if move_jobs(session, [job_id], REMADE, JobState.CANCELLED, message,
                         message=message[:500]):
                session.execute(delete(JobInput).where(col(JobInput.job_id) == job_id))
                # its events pass to the job `feed` makes anew, which adds them again
                session.execute(update(Production).where(
                    col(Production.id) == production.id).values(
                    events_total=Production.events_total - sa_select(col(Job.events)).where(
                        col(Job.id) == job_id).scalar_subquery()))


def _read_as_now(session: Session, job_id: int) -> None:
    """A job not yet sent anywhere reads its files as the catalog holds them now."""
    for entry in session.exec(select(JobInput).where(JobInput.job_id == job_id)).all():
        current = session.get_one(CatalogFile, entry.file_id)
        entry.attempt, entry.adler32 = current.attempt, current.adler32
        session.add(entry)
    session.flush()


# -- what a job reads, and what its outputs were made from -----------------------------------


def job_lfns(session: Session, job_ids: Iterable[int]) -> dict[int, list[str]]:
    """The input files of each of `job_ids` (of split productions), in LFN order."""
    found: dict[int, list[str]] = {}
    ids = list(job_ids)
    for start in range(0, len(ids), 5000):
        for job_id, lfn in session.exec(select(JobInput.job_id, JobInput.lfn).where(
                among(session, col(JobInput.job_id), ids[start:start + 5000]))
                .order_by(col(JobInput.lfn))).all():
            found.setdefault(job_id, []).append(lfn)
    return found


def parents_of(session: Session, job: Job, production: Production) -> list[tuple[str, str]]:
    """(lfn, adler32) of the files the job's outputs were made from: its own inputs, as
    its job read them, or the production's (every job reads them all)."""
    rows = session.exec(select(JobInput.lfn, JobInput.adler32).where(
        JobInput.job_id == job.id)).all()
    if rows:
        return [(lfn, adler32) for lfn, adler32 in rows]
    if not production.inputs:
        return []
    return [(lfn, adler32) for lfn, adler32 in session.exec(
        select(CatalogFile.lfn, CatalogFile.adler32).where(
            col(CatalogFile.lfn).in_(production.inputs))).all()]


# -- the steps of a chain, for `tower show` and the pages ------------------------------------


def steps(session: Session, name: str) -> list[dict[str, Any]]:
    """The chain `name` belongs to, upstream first: each step's state, jobs per state,
    and the input files it consumed and has still to consume."""
    specs = {row_name: spec for row_name, spec in session.exec(
        select(Production.name, Production.spec)).all()}
    upstream = {key: upstream_of(spec) for key, spec in specs.items()}
    members = {name}
    frontier = [name]
    while frontier and len(members) <= MAX_STEPS:
        step = frontier.pop()
        linked = upstream.get(step, []) + [key for key, ups in upstream.items() if step in ups]
        for other in linked:
            if other in specs and other not in members:
                members.add(other)
                frontier.append(other)
    if len(members) == 1 and not upstream.get(name):
        return []
    order = _upstream_first(members, upstream)
    rows = []
    for step in order:
        production = session.exec(select(Production).where(Production.name == step)).one()
        states = {state: count.jobs for state, count in tally.counts(
            session, production.id).get(production.id or 0, {}).items()}
        consumed = session.exec(select(func.count()).select_from(JobInput).where(
            JobInput.production_id == production.id)).one()
        rows.append({"production": step, "state": production.state,
                     "reads": upstream.get(step, []), "jobs": sum(states.values()),
                     "states": states, "files_consumed": consumed,
                     "ended": ended(session, step)})
    return rows


def _upstream_first(members: set[str], upstream: Mapping[str, list[str]]) -> list[str]:
    order: list[str] = []
    pending = sorted(members)
    while pending:
        ready = [step for step in pending
                 if all(up in order or up not in members for up in upstream.get(step, []))]
        ready = ready or pending[:1]  # a cycle (refused at submit) still prints
        order += ready
        pending = [step for step in pending if step not in ready]
    return order
