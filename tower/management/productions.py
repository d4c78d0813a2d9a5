"""Productions in the database: submission in bulk, lookup, and per-state counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Dataset
from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.errors import Conflict, NotFound, SpecError
from tower.management import chains, overrides
from tower.management.specs import (
    MERGED_KEYS,
    ParentLookup,
    ProductionSpec,
    Resolved,
    check_job_count,
    check_placement,
    load_requests,
    preview,
    resolve_all,
    split,
)
from tower.model import reads, tally, usage
from tower.model.db import analyze_after_commit, driver_connection, insert_rows
from tower.model.models import Job, Production, TuneDecision
from tower.model.states import (
    PRODUCTION_TRANSITIONS,
    JobState,
    ProductionState,
    move_jobs,
    move_production,
)


@dataclass(frozen=True)
class Submission:
    production: str
    jobs: int
    events: int
    dataset: str
    destinations: list[str]
    #: How a production split by its inputs makes its jobs (None: from its events).
    split: str | None = None


def parent_lookup(session: Session) -> ParentLookup:
    """Finds parents among productions already submitted."""
    def lookup(name: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        production = session.exec(select(Production).where(Production.name == name)).first()
        return None if production is None else (dict(production.spec), dict(production.origins))
    return lookup


def plan(session: Session, path: Path, config: TowerConfig) -> list[Resolved]:
    """Resolve and check every request of `path` against the database; writes nothing."""
    return plan_documents(session, load_requests(path), str(path), config)


def plan_documents(session: Session, documents: list[dict[str, Any]], path: str,
                   config: TowerConfig) -> list[Resolved]:
    """Resolve and check request documents (from `path`, for errors); writes nothing."""
    resolved = resolve_all(documents, path, parent_lookup(session), config.sites,
                           config.storage.destinations, config.policies)
    names = [item.spec.name for item in resolved]
    taken = session.exec(select(Production.name).where(col(Production.name).in_(names))).all()
    if taken:
        raise SpecError(f"{path}: production {taken[0]}: name: a production of this name "
                        "exists already", field="name")
    checked = [_checked(session, item, config, path) for item in resolved]
    chains.check_chain(session, checked, path)
    return checked


def _checked(session: Session, item: Resolved, config: TowerConfig, path: str) -> Resolved:
    resolve_inputs(session, item.spec, f"{path}: production {item.spec.name}")
    check_placement(item.spec, f"{path}: production {item.spec.name}", config.sites)
    return _with_destinations(item, config, path)


def own_document(production: Production) -> dict[str, Any]:
    """The request as its author wrote it: the settings that come from the production
    itself (not inherited, not defaults), with its parent."""
    document: dict[str, Any] = {"name": production.name}
    if production.parent:
        document["parent"] = production.parent
    for key, origin in production.origins.items():
        if origin != production.name:
            continue
        head, _, entry = key.partition(".")
        if entry and head in MERGED_KEYS:
            document.setdefault(head, {})[entry] = production.spec[head][entry]
        elif not entry:
            document[key] = production.spec[key]
    return document


def amend(session: Session, production: Production, changes: dict[str, Any],
          config: TowerConfig) -> None:
    """Change settings of a production whose jobs are not all made yet (a request, or a
    trial waiting for approval): its request with `changes` applied is resolved and
    checked again like a new one; the jobs made later follow it."""
    document = overrides.apply(own_document(production), changes)
    [item] = resolve_all([document], f"production {production.name}", parent_lookup(session),
                         config.sites, config.storage.destinations, config.policies)
    item = _checked(session, item, config, f"production {production.name}")
    chains.check_chain(session, [item], f"production {production.name}")
    spec = item.spec
    if spec.dataset_name != production.dataset:
        raise SpecError(f"production {production.name}: dataset: cannot change once made",
                        field="dataset")
    for key, value in {"spec": spec.model_dump(mode="json"), "origins": item.origins,
                       "events_total": 0 if spec.split else spec.events_total,
                       "events_per_job": spec.events_per_job,
                       "priority": spec.priority, "queue": spec.queue, "group": spec.group,
                       "template_hash": spec.template_hash, "updated_at": utcnow(),
                       "inputs": resolve_inputs(session, spec, spec.name) or None}.items():
        setattr(production, key, value)
    session.add(production)
    session.flush()


def resolve_inputs(session: Session, spec: ProductionSpec, where: str) -> list[str]:
    """The LFNs of a request's `inputs`: each a logical name, or a dataset's every file;
    none for a production split by its inputs, whose jobs each read their own
    (tower.management.chains). Raises SpecError naming the entry that the catalog does not
    hold."""
    if spec.split is not None:
        chains.static_files(session, spec, where)
        return []
    lfns: list[str] = []
    for position, entry in enumerate(spec.inputs):
        assert isinstance(entry, str)  # another's outputs: only with split
        if entry.startswith("/"):
            found = session.exec(select(CatalogFile.lfn).where(CatalogFile.lfn == entry)).all()
        else:
            found = session.exec(select(CatalogFile.lfn).join(
                Dataset, col(Dataset.id) == CatalogFile.dataset_id).where(
                Dataset.name == entry).order_by(col(CatalogFile.lfn))).all()
        if not found:
            raise SpecError(f"{where}: inputs[{position}]: the catalog holds no file or "
                            f"dataset {entry!r}", field=f"inputs[{position}]")
        lfns += [lfn for lfn in found if lfn not in lfns]
    return lfns


def _with_destinations(item: Resolved, config: TowerConfig, source: str) -> Resolved:
    spec = item.spec
    if spec.destinations or not spec.outputs:
        return item
    if not config.storage.default:
        raise SpecError(f"{source}: production {spec.name}: destinations: the request declares "
                        "outputs but names no destination, and the tower has no default",
                        field="destinations")
    spec = spec.model_copy(update={"destinations": list(config.storage.default)})
    return Resolved(spec, {**item.origins, "destinations": "(tower default)"})


def summarize(item: Resolved) -> Submission:
    spec = item.spec
    if spec.split is not None:
        return Submission(spec.name, 0, 0, spec.dataset_name, spec.destinations,
                          chains.describe_split(spec))
    return Submission(spec.name, spec.job_count, spec.events_total, spec.dataset_name,
                      spec.destinations)


def submit(session: Session, plans: list[Resolved], dry_run: bool,
           requested_by: str | None = None) -> dict[str, Any]:
    """Create the planned productions (unless `dry_run`), as requests waiting for a
    manager when `requested_by` names who files them; what was (or would be) made, with
    the first job rendered for a dry run."""
    rows = []
    for item in plans:
        row: dict[str, Any] = dict(vars(summarize(item)))
        if dry_run:
            row["first_job"] = preview(item.spec, chains.trial_inputs(session, item.spec, {
                plan.spec.name: plan.spec for plan in plans}))
        else:
            production = create(session, item, requested_by)
            row["state"] = production.state
            if item.spec.split is not None:  # the jobs of the files there already
                [summary] = summaries(session, production.name)
                row["jobs"], row["events"] = summary["jobs"], summary["events_total"]
        rows.append(row)
    return {"dry_run": dry_run, "productions": rows}


def create(session: Session, item: Resolved, requested_by: str | None = None) -> Production:
    """Write one resolved production and its dataset, and its jobs in bulk: all of them,
    or a trial's first, or (a request) none until a manager approves it."""
    spec = item.spec
    production = Production(
        name=spec.name, parent=spec.parent, priority=spec.priority, queue=spec.queue,
        group=spec.group,
        events_per_job=spec.events_per_job, dataset=spec.dataset_name,
        # split by inputs: its events are its files', counted as its jobs are made
        events_total=0 if spec.split else spec.events_total,
        template_hash=spec.template_hash, spec=spec.model_dump(mode="json"),
        origins=item.origins, inputs=resolve_inputs(session, spec, spec.name) or None,
        state=ProductionState.REQUESTED, full_run=False, requested_by=requested_by,
    )
    session.add(production)
    session.flush()
    assert production.id is not None
    _ensure_dataset(session, spec, production.id)
    if requested_by is None:
        start(session, production)
    return production


def start(session: Session, production: Production) -> None:
    """Make a production's first jobs: a trial's, or all of them."""
    spec = ProductionSpec.model_validate(production.spec)
    if spec.split is not None:  # its jobs come from its input files, as they come
        move(session, production, ProductionState.ACTIVE, "start", full_run=True)
        chains.feed(session, production)
    elif spec.trial is not None:
        trial = ProductionSpec.model_validate({**production.spec, "trial": None,
                                               "events_total": spec.trial.events})
        made = insert_jobs(session, production.id or 0, trial)
        move(session, production, ProductionState.TRIAL, "start", trial_jobs=made)
    else:
        insert_jobs(session, production.id or 0, spec)
        move(session, production, ProductionState.ACTIVE, "start", full_run=True)


def run_in_full(session: Session, production: Production, by: str) -> int:
    """After its trial: make the rest of a production's jobs, with its spec as it is now
    (tuned, perhaps), continuing the trial's streams, and let them run. Returns the jobs
    made."""
    spec = ProductionSpec.model_validate(production.spec)
    assert spec.trial is not None
    added = insert_jobs(session, production.id or 0, spec, production.trial_jobs,
                        spec.trial.events)
    move(session, production, ProductionState.ACTIVE, "approve", full_run=True,
         decided_by=by, decided_at=utcnow())
    return added


#: What differs from job to job of a production, as a submit writes them.
JOB_COLUMNS = ("production_id", "index", "seed", "first_event", "events")


def insert_jobs(session: Session, production_id: int, spec: ProductionSpec,
                start_index: int = 0, start_event: int = 0) -> int:
    """Insert the jobs of `spec` from `start_index` on, streamed as they are split (a COPY
    on PostgreSQL), no job held in memory longer than its chunk."""
    rows = ((production_id, job.index, job.seed, job.first_event, job.events)
            for job in split(spec, start_index, start_event))
    count = insert_rows(session, Job, JOB_COLUMNS, rows, {
        "state": JobState.DEFINED, "priority": spec.priority, "queue": spec.queue,
        "attempt": 0})
    tally.jobs_added(session, production_id, count, max(spec.events_total - start_event, 0))
    analyze_after_commit(session, Job)
    return count


#: A manager's action on a production -> the state it leaves it in.
CONTROLS = {"pause": ProductionState.PAUSED, "resume": ProductionState.ACTIVE,
            "cancel": ProductionState.CANCELLED}
#: Job states a cancellation ends: all that have not ended, except outputs being staged.
CANCELLABLE = [JobState.DEFINED, JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING,
               JobState.HELD]


def control(session: Session, name: str, action: str, by: str) -> dict[str, Any]:
    """Pause, resume or cancel a production. A paused one gets no new jobs matched (those
    at sites or running go on); a cancelled one's unfinished jobs are cancelled (a pilot
    running one is told to stop at its next heartbeat)."""
    production = get(session, name)
    target = CONTROLS[action]
    if action == "resume" and not production.full_run:
        target = ProductionState.TRIAL  # paused during its trial
    move(session, production, target, action)
    cancelled: list[int] = []
    if action == "cancel":
        ids = [job_id for job_id in session.exec(select(Job.id).where(
            Job.production_id == production.id, col(Job.state).in_(CANCELLABLE))).all()
            if job_id is not None]
        cancelled = move_jobs(session, ids, CANCELLABLE, JobState.CANCELLED,
                              f"production cancelled by {by}", message=f"cancelled by {by}")
    return {"production": name, "state": target, "jobs_cancelled": len(cancelled)}


def move(session: Session, production: Production, target: ProductionState, action: str,
         **fields: Any) -> None:
    """Move `production` to `target` for `action`, or say why it cannot."""
    current = ProductionState(production.state)
    if target not in PRODUCTION_TRANSITIONS[current] or not move_production(
            session, production.id or 0, current, target, **fields):
        raise Conflict(f"production {production.name} is {current}: it cannot {action}",
                       field="state")
    session.refresh(production)


def extend(session: Session, name: str, events_total: int) -> dict[str, Any]:
    """Raise a production's events: new jobs continue its streams (next index, next event,
    their own reproducible seeds) and their outputs land in the same dataset."""
    production = get(session, name)
    if production.state == "cancelled":
        raise Conflict(f"production {name} is cancelled: it cannot be extended", field="state")
    old = production.events_total
    if chains.is_split(production.spec):
        raise Conflict(f"production {name} is split by its inputs: its jobs come from its "
                       "files, not its events", field="events")
    if events_total <= old:
        raise SpecError(f"events: {events_total} is not more than the {old} events the "
                        f"production has", field="events")
    try:  # before any job is made
        check_job_count(events_total, production.spec["events_per_job"])
    except ValueError as exc:
        raise SpecError(f"events: {exc}", field="events") from None
    spec = ProductionSpec.model_validate({**production.spec, "events_total": events_total})
    added = 0
    if production.full_run:  # else its approval makes the jobs, up to the new total
        last = session.exec(select(func.max(Job.index)).where(
            Job.production_id == production.id)).one()
        added = insert_jobs(session, production.id or 0, spec, (last or 0) + 1, old)
    production.events_total, production.spec = events_total, spec.model_dump(mode="json")
    production.updated_at = utcnow()
    session.add(production)
    return {"production": name, "events_total": events_total, "jobs_added": added}


def _ensure_dataset(session: Session, spec: ProductionSpec, production_id: int) -> None:
    if session.exec(select(Dataset).where(Dataset.name == spec.dataset_name)).first():
        raise SpecError(f"production {spec.name}: dataset: {spec.dataset_name!r} exists already",
                        field="dataset")
    session.add(Dataset(
        name=spec.dataset_name, production_id=production_id,
        meta={"production": spec.name, "software": spec.software,
              "parameters": spec.parameters, "template_hash": spec.template_hash,
              "command": spec.command, "events_total": spec.events_total},
    ))


def get(session: Session, name: str) -> Production:
    production = session.exec(select(Production).where(Production.name == name)).first()
    if production is None:
        raise NotFound(f"no production named {name!r}", field="production")
    return production


def parameters(production: Production) -> list[tuple[str, Any, str]]:
    """Every resolved setting as (key, value, where it comes from): the production that set
    it (itself or an ancestor), or `default`. Parameters, steering files and environment
    are listed entry by entry, since each entry may come from a different ancestor."""
    rows: list[tuple[str, Any, str]] = []
    for key, value in production.spec.items():
        if key in MERGED_KEYS and isinstance(value, dict):
            rows.extend((f"{key}.{entry}", item,
                         production.origins.get(f"{key}.{entry}", "default"))
                        for entry, item in value.items())
        elif key != "spec_dir":
            rows.append((key, value, production.origins.get(key, "default")))
    return rows


def all_productions(session: Session) -> list[Production]:
    return list(session.exec(select(Production).order_by(col(Production.id))).all())


def state_counts(session: Session, production_id: int | None = None) -> dict[int, dict[str, int]]:
    """{production id: {state: jobs}} for one production or all, from the tally."""
    return {pid: {state: count.jobs for state, count in states.items()}
            for pid, states in tally.counts(session, production_id).items()}


def describe(session: Session, name: str) -> dict[str, Any]:
    """A production as `tower show` prints it: its summary, its ancestors, every resolved
    setting with the production it comes from, its trial and the decisions about it."""
    production = get(session, name)
    lineage: list[str] = []
    parent = production.parent
    while parent and parent not in lineage:
        lineage.append(parent)
        parent = session.exec(select(Production.parent).where(Production.name == parent)).first()
    return {
        **summaries(session, name)[0],
        "parent": production.parent, "lineage": lineage, "group": production.group,
        "settings": [{"key": key, "value": value, "from": origin}
                     for key, value, origin in sorted(parameters(production))],
        "trial_jobs": production.trial_jobs, "trial_report": production.trial_report,
        "requested_by": production.requested_by, "decided_by": production.decided_by,
        "decided_at": production.decided_at.isoformat(timespec="seconds")
        if production.decided_at else None, "decision_note": production.decision_note,
        "usage": usage.distribution(session, production.id or 0),
        "tuning": tuning(session, production.id or 0),
        "chain": chains.steps(session, name),
    }


def tuning(session: Session, production_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The latest changes `tune: auto` made to a production, newest first."""
    rows = session.exec(select(TuneDecision).where(TuneDecision.production_id == production_id)
                        .order_by(col(TuneDecision.id).desc()).limit(limit)).all()
    return [{"at": row.at.isoformat(timespec="seconds"), "setting": row.setting,
             "old": row.old, "new": row.new, "samples": row.samples, "p95": row.p95,
             "factor": row.factor, "bound": row.bound, "reason": row.reason} for row in rows]


def clone(session: Session, config: TowerConfig, source: str, name: str,
          changes: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """A new production derived from `source` (its parent), with `changes`; it writes its
    own dataset unless the changes name one."""
    original = get(session, source)
    document: dict[str, Any] = {"name": name, "parent": source}
    if original.spec.get("dataset"):
        document["dataset"] = None
    plans = plan_documents(session, [overrides.apply(document, changes)],
                           f"clone of {source}", config)
    return submit(session, plans, dry_run)


def summaries(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """One production (or all) with its jobs per state, events done, and the outputs
    waiting at the sites for each destination: the reads `tower status` makes without the
    ORM (tower.model.reads), in this transaction, its moves included."""
    tally.write_pending(session)
    return reads.summaries(driver_connection(session), name)
