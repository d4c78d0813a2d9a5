"""The REST API under /api/v1: the pilots' calls, and everything the `tower` command does, for
people and scripts; each view declares the permission it needs (`web.auth`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field
from sqlmodel import Session

from catalog import files, lineage, queries
from sites.schema import Id, Int32, Line, Strict, build, json_document, yaml_documents
from tower.auth.access import Permission
from tower.brokers.broker import queue_name
from tower.brokers.dbqueue import ack, lease, release
from tower.errors import GridtowerError, NotFound, SpecError
from tower.loops import attempts, factory, wakeups
from tower.loops.site_status import site_queues
from tower.management import approval, overrides, productions, sheets, why
from tower.management.catalog_verify import verify_dataset
from tower.management.specs import parse_requests
from tower.model import fleet, jobs, provenance
from tower.model.db import transaction
from tower.model.states import JobState
from tower.retries import failures, replay, retry
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime
from web.auth import body_model, caller, needs
from web.bounds import whole_number

api = Blueprint("api", __name__)

#: Seconds a pilot holds a leased database-queue message before it returns to the queue.
LEASE_SECONDS = 120


class BadRequest(GridtowerError):
    """The request body is invalid."""

    status = 400


class Hello(Strict):
    host: Line | None = Field(default=None, max_length=255)


class Lease(Strict):
    queue: str = Field(max_length=200)
    max: int = Field(ge=0, le=1000)
    ack: list[Id] = Field(default_factory=list, max_length=10000)


class Release(Strict):
    ids: list[Id] = Field(max_length=10000)


class Claim(Strict):
    jobs: list[tuple[Id, Id]] = Field(max_length=1000)
    #: Attempts that ended since the pilot's last call: a pilot whose payloads end and
    #: whose next jobs wait reports and claims in one round trip (and one transaction).
    reports: list[attempts.Report] = Field(default_factory=list, max_length=1000)


class Heartbeat(Strict):
    jobs: list[tuple[Id, Id]] = Field(default_factory=list, max_length=10000)


class Reports(Strict):
    reports: list[attempts.Report] = Field(max_length=1000)


class RetryRequest(Strict):
    classes: list[Outcome] = Field(default_factory=list)
    exit_code: Int32 | None = None


class JobChoice(Strict):
    """Jobs by id, and (or) every job of a production that the action applies to."""

    jobs: list[Id] = Field(default_factory=list, max_length=100000)
    production: str | None = None


class Submission(Strict):
    """Production requests as the `tower submit` file holds them."""

    #: The YAML text (one or more documents).
    text: str = Field(min_length=1, max_length=1_000_000)
    #: The file's name, for error messages.
    source: str = Field(default="request.yaml", max_length=500)
    #: Where relative paths in the requests point, at the tower.
    spec_dir: str = Field(default="", max_length=2000)
    dry_run: bool = False


class SheetImport(Strict):
    """A request sheet, as `tower import` reads it: one production a row, each derived from
    a template production."""

    #: The CSV text, header row first.
    text: str = Field(max_length=5_000_000)
    #: The file's name, for error messages.
    source: str = Field(default="sheet.csv", max_length=500)
    #: The production every row derives from.
    template: str = Field(min_length=1, max_length=200)
    #: Names rows without a name column (a Python format string).
    name: str = Field(default=sheets.DEFAULT_PATTERN, min_length=1, max_length=500)
    dry_run: bool = False


class Extension(Strict):
    #: The production's new total of events.
    events: int = Field(gt=0)


class Goodbye(Strict):
    message: Line = Field(default="", max_length=500)


def _runtime() -> Runtime:
    return current_app.extensions["gridtower"]  # type: ignore[no-any-return]


def _body() -> Any:
    """The request's JSON body, validated by the model its view declares."""
    model = body_model(current_app.view_functions[request.endpoint or ""])
    assert model is not None, "the view declares no body model"
    data = json_document(request.get_data(), "request body", error=BadRequest)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return build(model, data, "request body", error=BadRequest)


@api.post("/pilots/<pilot_id>/register")
@needs(Permission.PILOT, body=Hello)
def register(pilot_id: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        pilot = fleet.register(session, pilot_id, body.host)
        return jsonify({"pilot": pilot.id, "site": pilot.site, "state": pilot.state})


@api.post("/pilots/<pilot_id>/lease")
@needs(Permission.PILOT, body=Lease)
def lease_messages(pilot_id: str) -> Any:
    """Database queue only: acknowledge done messages and lease new ones, in one round trip."""
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        pilot = fleet.require_working(session, pilot_id)
        ack(session, body.ack, pilot_id)
        # exactly one of its site's queues: a prefix would let site "a" read site "a.b"'s
        site = runtime.config.sites.get(pilot.site)
        if site is None or body.queue not in {queue_name(pilot.site, queue)
                                              for queue in site.queues}:
            raise BadRequest(f"queue {body.queue!r} is not one of site {pilot.site}'s",
                             field="queue")
        taken = lease(session, body.queue, pilot_id, body.max, LEASE_SECONDS)
    return jsonify({"messages": [{"id": mid, **message} for mid, message in taken]})


@api.post("/pilots/<pilot_id>/release")
@needs(Permission.PILOT, body=Release)
def release_messages(pilot_id: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        fleet.require_working(session, pilot_id)
        released = release(session, body.ids, pilot_id)
    return jsonify({"released": released})


@api.post("/pilots/<pilot_id>/claim")
@needs(Permission.PILOT, body=Claim)
def claim(pilot_id: str) -> Any:
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        verdicts = attempts.report(session, runtime.config, pilot_id, body.reports)
        grant = attempts.claim(session, runtime.config, pilot_id, body.jobs)
        # the site's backlog has room again; outputs to stage, failed jobs to place again
        wakeups.wake(runtime, session, "matchmaker", *(["stager"] if body.reports else []))
    return jsonify({"jobs": grant.jobs, "productions": grant.productions,
                    "verdicts": [verdict.as_dict() for verdict in verdicts]})


@api.post("/pilots/<pilot_id>/heartbeat")
@needs(Permission.PILOT, body=Heartbeat)
def heartbeat(pilot_id: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        stop = attempts.heartbeat(session, pilot_id, body.jobs)
    return jsonify({"stop": stop})


@api.post("/pilots/<pilot_id>/report")
@needs(Permission.PILOT, body=Reports)
def report(pilot_id: str) -> Any:
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        verdicts = attempts.report(session, runtime.config, pilot_id, body.reports)
        wakeups.wake(runtime, session, "stager", "matchmaker")  # outputs, jobs to place again
    return jsonify({"verdicts": [verdict.as_dict() for verdict in verdicts]})


@api.post("/pilots/<pilot_id>/drain")
@needs(Permission.PILOT)
def drain(pilot_id: str) -> Any:
    with transaction(_runtime().engine) as session:
        fleet.drain(session, pilot_id)
    return jsonify({"pilot": pilot_id, "state": "draining"})


@api.post("/pilots/<pilot_id>/goodbye")
@needs(Permission.PILOT, body=Goodbye)
def goodbye(pilot_id: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        fleet.end(session, pilot_id, body.message or "drained")
    return jsonify({"pilot": pilot_id, "state": "done"})


@api.get("/openapi.json")
@needs(Permission.READ)
def openapi() -> Any:
    """This document: every endpoint, its parameters, permission and body."""
    from web.openapi import document

    return jsonify(document(current_app))


@api.get("/productions")
@needs(Permission.READ)
def list_productions() -> Any:
    with Session(_runtime().engine) as session:
        return jsonify({"productions": productions.summaries(session)})


@api.post("/productions")
@needs(Permission.MANAGE, body=Submission)
def submit_productions() -> Any:
    """Validate production requests and create their jobs (or, dry run, show them)."""
    return _submit(requested_by=None)


def _submit(requested_by: str | None) -> Any:
    body = _body()
    runtime = _runtime()
    documents = parse_requests(yaml_documents(body.text, body.source, error=SpecError),
                               body.source, body.spec_dir)
    with transaction(runtime.engine) as session:
        return jsonify(productions.submit(session, productions.plan_documents(
            session, documents, body.source, runtime.config), body.dry_run, requested_by))


@api.post("/productions/import")
@needs(Permission.MANAGE, body=SheetImport)
def import_productions() -> Any:
    """Create one production per row of a request sheet (or, dry run, show them); a bad
    row creates nothing, and the error names every bad row."""
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        return jsonify(productions.submit(session, sheets.plan(
            session, body.text, body.source, body.template, body.name, runtime.config),
            body.dry_run))


@api.get("/jobs")
@needs(Permission.READ)
def list_jobs() -> Any:
    """Jobs in id order, filtered by production, state and site; page with ?after=ID."""
    args = request.args
    state = args.get("state")
    if state is not None and state not in {str(s) for s in JobState}:
        raise BadRequest(f"state: no state {state!r}", field="state")
    after, limit = whole_number("after", 0, 0), whole_number("limit", 100, 1, 1000)
    with Session(_runtime().engine) as session:
        return jsonify(jobs.page(session, args.get("production"), state, args.get("site"),
                                 after, limit))


@api.get("/jobs/<int:job_id>")
@needs(Permission.READ)
def show_job(job_id: int) -> Any:
    """One job with all its attempts."""
    with Session(_runtime().engine) as session:
        return jsonify(jobs.show(session, job_id))


@api.get("/jobs/<int:job_id>/attempts/<int:attempt>/provenance")
@needs(Permission.READ)
def attempt_provenance(job_id: int, attempt: int) -> Any:
    """How one attempt ran (tower.model.provenance), whatever its outcome."""
    with Session(_runtime().engine) as session:
        record = provenance.of_attempt(session, job_id, attempt)
    if record is None:
        raise NotFound(f"no provenance record of attempt {attempt} of job {job_id}",
                       field="attempt")
    return jsonify({"job": job_id, "attempt": attempt, "provenance": record})


@api.get("/pilots")
@needs(Permission.READ)
def list_pilots() -> Any:
    """Pilots, newest first, filtered by site and state."""
    limit = whole_number("limit", 50, 1, 1000)
    with Session(_runtime().engine) as session:
        return jsonify({"pilots": fleet.listing(session, request.args.get("site"),
                                                request.args.get("state"), limit)})


@api.get("/sites")
@needs(Permission.READ)
def list_sites() -> Any:
    """Each site queue: pilots, jobs waiting, backlog and bound, broker depth, cool-down,
    the credential as the monitor last read it (`?live=true`: read from each site now)."""
    runtime = _runtime()
    rows, problem = site_queues(runtime, live=request.args.get("live") == "true")
    return jsonify({"sites": rows, "broker_error": problem,
                    "insecure": runtime.config.api.exposed})


@api.get("/sites/<name>/decisions")
@needs(Permission.READ)
def site_decisions(name: str) -> Any:
    """The factory's recent decisions for a site."""
    runtime = _runtime()
    if name not in runtime.config.sites:
        raise NotFound(f"no site {name!r}", field="site")
    limit = whole_number("limit", 20, 1, 200)
    with Session(runtime.engine) as session:
        return jsonify({"site": name, "decisions": [
            row.model_dump(mode="json") for row in factory.recent_decisions(session, name,
                                                                            limit)]})


@api.get("/productions/<name>")
@needs(Permission.READ)
def show_production(name: str) -> Any:
    with Session(_runtime().engine) as session:
        return jsonify(productions.summaries(session, name)[0])


def _actor() -> str:
    """Who acts, as recorded in decisions: the certificate's subject."""
    return caller().dn or "anonymous"


@api.post("/productions/<name>/pause", defaults={"action": "pause"})
@api.post("/productions/<name>/resume", defaults={"action": "resume"})
@api.post("/productions/<name>/cancel", defaults={"action": "cancel"})
@needs(Permission.MANAGE)
def control_production(name: str, action: str) -> Any:
    """Pause, resume or cancel a production."""
    with transaction(_runtime().engine) as session:
        return jsonify(productions.control(session, name, action, _actor()))


@api.post("/productions/<name>/extend")
@needs(Permission.MANAGE, body=Extension)
def extend_production(name: str) -> Any:
    """Raise a production's events; new jobs continue its streams in the same dataset."""
    body = _body()
    with transaction(_runtime().engine) as session:
        return jsonify(productions.extend(session, name, body.events))


@api.get("/productions/<name>/settings")
@needs(Permission.READ)
def production_settings(name: str) -> Any:
    """Every resolved setting with the production it comes from; trial and decisions."""
    with Session(_runtime().engine) as session:
        return jsonify(productions.describe(session, name))


class CloneRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    #: KEY=VALUE settings (tower.management.overrides).
    set: list[str] = Field(default_factory=list, max_length=200)
    dry_run: bool = False


@api.post("/productions/<name>/clone")
@needs(Permission.MANAGE, body=CloneRequest)
def clone_production(name: str) -> Any:
    """A new production derived from this one, with changed settings."""
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        return jsonify(productions.clone(session, runtime.config, name, body.name,
                                         overrides.parse(body.set), body.dry_run))


class Approval(Strict):
    #: Take the trial's proposal (None: as the production's request says).
    tune: bool | None = None
    set: list[str] = Field(default_factory=list, max_length=200)
    note: str | None = Field(default=None, max_length=1000)


@api.post("/productions/<name>/approve")
@needs(Permission.MANAGE, body=Approval)
def approve_production(name: str) -> Any:
    """Approve a request, or the full run after a trial."""
    body = _body()
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        return jsonify(approval.approve(session, runtime.config, name, _actor(), body.tune,
                                        overrides.parse(body.set), body.note))


class Rejection(Strict):
    reason: str = Field(min_length=1, max_length=1000)


@api.post("/productions/<name>/reject")
@needs(Permission.MANAGE, body=Rejection)
def reject_production(name: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        return jsonify(approval.reject(session, name, _actor(), body.reason))


@api.post("/requests")
@needs(Permission.REQUEST, body=Submission)
def file_requests() -> Any:
    """File production requests for a manager to approve (no job runs before)."""
    return _submit(requested_by=_actor())


@api.get("/productions/<name>/failures")
@needs(Permission.READ)
def production_failures(name: str) -> Any:
    with Session(_runtime().engine) as session:
        return jsonify(failures.report(session, productions.get(session, name)))


@api.post("/productions/<name>/retry")
@needs(Permission.MANAGE, body=RetryRequest)
def retry_production(name: str) -> Any:
    body = _body()
    with transaction(_runtime().engine) as session:
        moved = retry.retry_failed(session, productions.get(session, name), _actor(),
                                   [str(c) for c in body.classes], body.exit_code)
    return jsonify({"retried": moved, "count": len(moved)})


@api.get("/held")
@needs(Permission.READ)
def held_jobs() -> Any:
    name = request.args.get("production")
    with Session(_runtime().engine) as session:
        production = productions.get(session, name) if name else None
        return jsonify({"held": retry.held(session, production)})


@api.post("/jobs/hold", defaults={"action": "hold"})
@api.post("/jobs/release", defaults={"action": "release"})
@needs(Permission.MANAGE, body=JobChoice)
def hold_or_release(action: str) -> Any:
    """Hold jobs not yet running, or let held jobs run again with a fresh budget."""
    body = _body()
    if not body.jobs and not body.production:
        raise BadRequest("give jobs or a production", field="jobs")
    with transaction(_runtime().engine) as session:
        moved = retry.act_on(session, action, body.jobs, body.production, _actor())
    verb = "held" if action == "hold" else "released"
    return jsonify({verb: moved, "count": len(moved)})


@api.get("/jobs/<int:job_id>/why")
@needs(Permission.READ)
def job_why(job_id: int) -> Any:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        return jsonify(why.explain(session, runtime.config, job_id))


@api.get("/productions/<name>/why")
@needs(Permission.READ)
def production_why(name: str) -> Any:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        return jsonify(why.explain_production(session, runtime.config, name))


@api.get("/policies")
@needs(Permission.READ)
def list_policies() -> Any:
    config = _runtime().config
    return jsonify({"default": config.retry.policy, "policies": {
        name: policy.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, policy in config.policies.items()}})


@api.get("/policies/<name>/simulate")
@needs(Permission.READ)
def simulate_policy(name: str) -> Any:
    runtime = _runtime()
    if name not in runtime.config.policies:
        raise NotFound(f"no policy named {name!r}", field="policy")
    production = request.args.get("production")
    if not production:
        raise BadRequest("give ?production=NAME", field="production")
    with Session(runtime.engine) as session:
        return jsonify(replay.simulate(session, productions.get(session, production), name,
                                       runtime.config.policies[name]))


# -- catalog


@api.get("/catalog/datasets")
@needs(Permission.READ)
def catalog_datasets() -> Any:
    with Session(_runtime().engine) as session:
        return jsonify({"datasets": files.datasets(session)})


@api.get("/catalog/datasets/<path:name>/files")
@needs(Permission.READ)
def catalog_dataset_files(name: str) -> Any:
    """The file list of `catalog export`: `?format=json` (the default) or `names`."""
    fmt = request.args.get("format", "json")
    with Session(_runtime().engine) as session:
        rows = queries.export(session, name, fmt)
    return jsonify({"dataset": name, "names" if fmt == "names" else "files": rows})


@api.get("/catalog/find")
@needs(Permission.READ)
def catalog_find() -> Any:
    """Files matching every `?q=KEY=VALUE` condition (see catalog.queries)."""
    conditions = queries.parse_conditions(request.args.getlist("q"))
    with Session(_runtime().engine) as session:
        return jsonify({"files": queries.find(session, conditions)})


@api.get("/catalog/lineage")
@needs(Permission.READ)
def catalog_lineage() -> Any:
    """`?lfn=LFN`: the file, every file it was made from up to the generator, and every
    file made from it (see catalog.lineage)."""
    lfn = request.args.get("lfn")
    if not lfn or len(lfn) > 1000:
        raise BadRequest("give ?lfn=LFN (at most 1000 characters)", field="lfn")
    with Session(_runtime().engine) as session:
        return jsonify(lineage.walk(session, lfn))


@api.get("/catalog/files/<path:lfn>/provenance")
@needs(Permission.READ)
def catalog_file_provenance(lfn: str) -> Any:
    """How the file `/LFN` was made (tower.model.provenance), and the command that remakes
    it from that record and compares (`tower rerun`)."""
    with Session(_runtime().engine) as session:
        return jsonify(provenance.described(session, "/" + lfn.lstrip("/")))


@api.post("/catalog/datasets/<path:name>/verify")
@needs(Permission.MANAGE)
def catalog_verify(name: str) -> Any:
    """`?remove_leftovers=1` removes the files nothing names (see
    tower.management.catalog_verify)."""
    return jsonify(verify_dataset(_runtime(), name,
                                  bool(whole_number("remove_leftovers", 0, 0, 1))))
