"""The REST API under /api/v1: the pilot's calls, and read access for people and scripts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field
from sqlmodel import Session

from catalog import files, queries
from tower import attempts, failures, fleet, productions, replay, retry, why
from tower.catalog_verify import verify_dataset
from tower.db import transaction
from tower.dbqueue import ack, lease, release
from tower.errors import GridtowerError, NotFound
from tower.outcomes import Outcome
from tower.runtime import Runtime
from tower.schema import Strict, build

api = Blueprint("api", __name__)

#: Seconds a pilot holds a leased database-queue message before it returns to the queue.
LEASE_SECONDS = 120


class BadRequest(GridtowerError):
    """The request body is invalid."""

    status = 400


class Hello(Strict):
    host: str | None = Field(default=None, max_length=255)


class Lease(Strict):
    queue: str = Field(max_length=200)
    max: int = Field(ge=0, le=1000)
    ack: list[int] = Field(default_factory=list, max_length=10000)


class Release(Strict):
    ids: list[int] = Field(max_length=10000)


class Claim(Strict):
    jobs: list[tuple[int, int]] = Field(max_length=1000)


class Heartbeat(Strict):
    jobs: list[tuple[int, int]] = Field(default_factory=list, max_length=10000)


class Reports(Strict):
    reports: list[attempts.Report] = Field(max_length=1000)


class RetryRequest(Strict):
    classes: list[Outcome] = Field(default_factory=list)
    exit_code: int | None = None


class JobIds(Strict):
    jobs: list[int] = Field(min_length=1, max_length=100000)


class Goodbye(Strict):
    message: str = Field(default="", max_length=500)


def _runtime() -> Runtime:
    return current_app.extensions["gridtower"]  # type: ignore[no-any-return]


def _body(model: type[Strict]) -> Any:
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the request body must be a JSON object")
    return build(model, data, "request body", error=BadRequest)


@api.post("/pilots/<pilot_id>/register")
def register(pilot_id: str) -> Any:
    body = _body(Hello)
    with transaction(_runtime().engine) as session:
        pilot = fleet.register(session, pilot_id, body.host)
        return jsonify({"pilot": pilot.id, "site": pilot.site, "state": pilot.state})


@api.post("/pilots/<pilot_id>/lease")
def lease_messages(pilot_id: str) -> Any:
    """Database queue only: acknowledge done messages and lease new ones, in one round trip."""
    body = _body(Lease)
    with transaction(_runtime().engine) as session:
        pilot = fleet.require_working(session, pilot_id)
        ack(session, body.ack, pilot_id)
        if not body.queue.startswith(f"{pilot.site}."):
            raise BadRequest(f"queue {body.queue!r} is not one of site {pilot.site}'s",
                             field="queue")
        taken = lease(session, body.queue, pilot_id, body.max, LEASE_SECONDS)
    return jsonify({"messages": [{"id": mid, **message} for mid, message in taken]})


@api.post("/pilots/<pilot_id>/release")
def release_messages(pilot_id: str) -> Any:
    body = _body(Release)
    with transaction(_runtime().engine) as session:
        fleet.require_working(session, pilot_id)
        release(session, body.ids, pilot_id)
    return jsonify({"released": len(body.ids)})


@api.post("/pilots/<pilot_id>/claim")
def claim(pilot_id: str) -> Any:
    body = _body(Claim)
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        answers = attempts.claim(session, runtime.config, pilot_id, body.jobs)
    return jsonify({"jobs": answers})


@api.post("/pilots/<pilot_id>/heartbeat")
def heartbeat(pilot_id: str) -> Any:
    body = _body(Heartbeat)
    with transaction(_runtime().engine) as session:
        stop = attempts.heartbeat(session, pilot_id, body.jobs)
    return jsonify({"stop": stop})


@api.post("/pilots/<pilot_id>/report")
def report(pilot_id: str) -> Any:
    body = _body(Reports)
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        verdicts = attempts.report(session, runtime.config, pilot_id, body.reports)
    return jsonify({"verdicts": [verdict.as_dict() for verdict in verdicts]})


@api.post("/pilots/<pilot_id>/drain")
def drain(pilot_id: str) -> Any:
    with transaction(_runtime().engine) as session:
        fleet.drain(session, pilot_id)
    return jsonify({"pilot": pilot_id, "state": "draining"})


@api.post("/pilots/<pilot_id>/goodbye")
def goodbye(pilot_id: str) -> Any:
    body = _body(Goodbye)
    with transaction(_runtime().engine) as session:
        fleet.end(session, pilot_id, body.message or "drained")
    return jsonify({"pilot": pilot_id, "state": "done"})


@api.get("/productions")
def list_productions() -> Any:
    with Session(_runtime().engine) as session:
        return jsonify({"productions": productions.summaries(session)})


@api.get("/productions/<name>")
def show_production(name: str) -> Any:
    with Session(_runtime().engine) as session:
        return jsonify(productions.summaries(session, name)[0])


#: Who acts through the API, until certificates name the person.
API_ACTOR = "api"


@api.get("/productions/<name>/failures")
def production_failures(name: str) -> Any:
    with Session(_runtime().engine) as session:
        return jsonify(failures.report(session, productions.get(session, name)))


@api.post("/productions/<name>/retry")
def retry_production(name: str) -> Any:
    body = _body(RetryRequest)
    with transaction(_runtime().engine) as session:
        moved = retry.retry_failed(session, productions.get(session, name), API_ACTOR,
                                   [str(c) for c in body.classes], body.exit_code)
    return jsonify({"retried": moved, "count": len(moved)})


@api.get("/held")
def held_jobs() -> Any:
    name = request.args.get("production")
    with Session(_runtime().engine) as session:
        production = productions.get(session, name) if name else None
        return jsonify({"held": retry.held(session, production)})


@api.post("/jobs/hold")
def hold_jobs() -> Any:
    body = _body(JobIds)
    with transaction(_runtime().engine) as session:
        moved = retry.hold(session, body.jobs, API_ACTOR)
    return jsonify({"held": moved, "count": len(moved)})


@api.post("/jobs/release")
def release_jobs() -> Any:
    body = _body(JobIds)
    with transaction(_runtime().engine) as session:
        moved = retry.release(session, body.jobs, API_ACTOR)
    return jsonify({"released": moved, "count": len(moved)})


@api.get("/jobs/<int:job_id>/why")
def job_why(job_id: int) -> Any:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        return jsonify(why.explain(session, runtime.config, job_id))


@api.get("/policies")
def list_policies() -> Any:
    config = _runtime().config
    return jsonify({"default": config.retry.policy, "policies": {
        name: policy.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, policy in config.policies.items()}})


@api.get("/policies/<name>/simulate")
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
def catalog_datasets() -> Any:
    with Session(_runtime().engine) as session:
        return jsonify({"datasets": files.datasets(session)})


@api.get("/catalog/datasets/<path:name>/files")
def catalog_dataset_files(name: str) -> Any:
    """The file list of `catalog export`: `?format=json` (the default) or `names`."""
    fmt = request.args.get("format", "json")
    with Session(_runtime().engine) as session:
        rows = queries.export(session, name, fmt)
    return jsonify({"dataset": name, "names" if fmt == "names" else "files": rows})


@api.get("/catalog/find")
def catalog_find() -> Any:
    """Files matching every `?q=KEY=VALUE` condition (see catalog.queries)."""
    conditions = queries.parse_conditions(request.args.getlist("q"))
    with Session(_runtime().engine) as session:
        return jsonify({"files": queries.find(session, conditions)})


@api.post("/catalog/datasets/<path:name>/verify")
def catalog_verify(name: str) -> Any:
    return jsonify(verify_dataset(_runtime(), name))
