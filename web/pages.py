"""The status pages: server-rendered HTML that refreshes itself and needs no JavaScript.

Overview, production, site, jobs, job, pilots and the catalog browser. Counts come from
the kept tally (`tower.model.tally`), never from a scan of the jobs table, so the overview and
production pages stay fast with millions of jobs. Each page reads with the caller's role;
the production page's actions (pause, resume, cancel, retry) show only to those who may
manage, and post back to the page with a same-origin check.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from sqlmodel import Session, col, select

from catalog import files, queries
from catalog.models import CatalogFile, Dataset
from catalog.timeutil import utcnow
from tower.auth.access import Permission, allows
from tower.errors import Forbidden, GridtowerError
from tower.loops import attempt_logs, factory
from tower.loops.site_status import site_queues
from tower.management import approval, chains, productions, progress, why
from tower.model import fleet, jobs, provenance, tally, usage
from tower.model.models import Attempt, Output, Production, SiteHealth
from tower.model.states import JOB_TERMINAL, JobState, PilotState
from tower.retries import retry
from tower.retries.outcomes import NOT_FAILURES, Outcome, blame
from tower.runtime import Runtime
from web import plots, site_history
from web import summary as run_summary
from web.auth import caller, needs
from web.bounds import whole_number

pages = Blueprint("pages", __name__, template_folder="templates")

#: Seconds between a page's own refreshes.
REFRESH = 30
#: Rows per page of the jobs, pilots and file tables.
PAGE = 100
#: How far back the plots look.
WINDOW = timedelta(hours=24)

#: Colours of job states, in the order the progress bar stacks them.
STATE_COLOURS = {
    "done": "#2e7d32", "staging": "#66bb6a", "running": "#1e88e5", "queued": "#90caf9",
    "assigned": "#bbdefb", "defined": "#e0e0e0", "held": "#ffb300", "failed": "#c62828",
    "cancelled": "#757575",
}
#: Colours of failure classes in the plots; classes not named share the last.
FAILURE_COLOURS = ("#c62828", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e",
                   "#558b2f", "#37474f")
ACTIONS = ("pause", "resume", "cancel", "retry", "approve")


def _runtime() -> Runtime:
    return current_app.extensions["gridtower"]  # type: ignore[no-any-return]


def _may_manage() -> bool:
    return allows(caller(), Permission.MANAGE, _runtime().config.access.anonymous_read)


@pages.app_template_filter("n")
def _thousands(value: int | float | None) -> str:
    return "–" if value is None else f"{value:,}"


@pages.app_template_filter("bytes")
def _bytes(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@pages.app_template_filter("value")
def _value(value: Any) -> str:
    """A setting as its request would spell it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@pages.app_template_filter("when")
def _when(value: datetime | str | None) -> str:
    if value is None:
        return "–"
    text = value if isinstance(value, str) else value.isoformat(timespec="seconds")
    return text.replace("T", " ")[:19]


@pages.app_context_processor
def _context() -> dict[str, Any]:
    who = caller() if request.blueprint == "pages" else None
    return {"refresh": REFRESH, "now": utcnow(), "who": who,
            "insecure": _runtime().config.api.exposed,
            "states": list(STATE_COLOURS), "state_colours": STATE_COLOURS}


# -- overview -----------------------------------------------------------------------------------

@pages.get("/")
@needs(Permission.READ)
def overview() -> str:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        summaries = productions.summaries(session)
        ids = {p.name: p.id or 0 for p in productions.all_productions(session)}
        counts = {ids[row["name"]]: row["states"] for row in summaries}
        paces = progress.paces(session, counts)
        points = tally.activity(session, since=utcnow() - WINDOW)
    for row in summaries:
        row["pace"] = paces[ids[row["name"]]]
    going = ("active", "paused", progress.WAITING)
    active = [row for row in summaries if row["phase"] in going]
    finished = [row for row in summaries if row["phase"] not in going]
    sites, broker_error = site_queues(runtime)
    return render_template("overview.html", active=active, finished=finished, sites=sites,
                           broker_error=broker_error, **_plots(points))


def _plots(points: list[tally.Point]) -> dict[str, Any]:
    """Throughput (jobs done) and failures (attempts, by class) over the plot window."""
    end = utcnow()
    start = end - WINDOW
    done: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    failed: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for point in points:
        if point.kind == tally.DONE:
            done[point.bucket]["done"] += point.count
        elif point.kind not in progress.NOT_FAILED:
            failed[point.bucket][point.kind] += point.count
    starts, step, done_values = plots.buckets(done, start, end)
    _, _, failed_values = plots.buckets(failed, start, end)
    classes = sorted(failed_values, key=lambda kind: -sum(failed_values[kind]))
    return {
        "throughput_plot": plots.stacked_bars(
            "Jobs done per interval, last 24 hours", starts, step,
            [plots.Series("done", tuple(done_values.get("done", [0.0] * len(starts))),
                          STATE_COLOURS["done"])]),
        "failures_plot": plots.stacked_bars(
            "Failed attempts per interval by class, last 24 hours", starts, step,
            [plots.Series(kind, tuple(failed_values[kind]),
                          FAILURE_COLOURS[min(i, len(FAILURE_COLOURS) - 1)])
             for i, kind in enumerate(classes)], unit="attempts"),
    }


# -- production ---------------------------------------------------------------------------------

@pages.get("/productions/<name>")
@needs(Permission.READ)
def production(name: str) -> str:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        chosen = productions.get(session, name)
        [summary] = productions.summaries(session, name)
        pid = chosen.id or 0
        pace = progress.paces(session, {pid: summary["states"]})[pid]
        totals = tally.totals(session, production_id=pid)
        at_sites = _jobs_at_sites(session, pid)
        run_plots = [(plot, run_summary.svg(data)) for plot, data in
                     run_summary.plots_data(session, chosen, list(run_summary.PLOTS)).items()]
        parameters = sorted(productions.parameters(chosen))
        used = usage.distribution(session, pid)
        tuning = productions.tuning(session, pid)
        chain = chains.steps(session, name)
        linked = set(session.exec(select(Production.name).where(
            col(Production.name).in_({origin for _, _, origin in parameters}))).all())
    failures: Counter[tuple[str, int]] = Counter()
    per_site: dict[str, Counter[str]] = defaultdict(Counter)
    for (_, site, kind, code), count in totals.items():
        if kind in progress.NOT_FAILED:
            per_site[site][kind] += count
        else:
            per_site[site]["failed_attempts"] += count
            failures[(kind, code)] += count
    for (site, state), count in at_sites.items():
        per_site[site][state] += count
    return render_template(
        "production.html", production=chosen, summary=summary, pace=pace,
        phase=summary["phase"],
        parameters=parameters, linked=linked, usage=used, tuning=tuning, chain=chain,
        usage_figures=usage.FIGURES,
        failures=[{"class": kind, "code": code, "blame": blame(Outcome(kind)), "attempts": n}
                  for (kind, code), n in failures.most_common()],
        per_site=dict(sorted(per_site.items())), may_manage=_may_manage(),
        message=request.args.get("message"), actions=ACTIONS, run_plots=run_plots)


def _jobs_at_sites(session: Session, production_id: int) -> dict[tuple[str, str], int]:
    """Jobs of a production at a site now (assigned to staging), per site and state, from
    the tally (a count over the jobs grows with the backlog: 200 ms for 200,000 queued)."""
    counts: Counter[tuple[str, str]] = Counter()
    for (_, site, _, state), placed in tally.placed(session, production_id).items():
        counts[(site, state)] += placed
    return dict(counts)


@pages.post("/productions/<name>/<action>")
@needs(Permission.MANAGE)
def act(name: str, action: str) -> Any:
    """A production action from its page's buttons; back to the page with what happened."""
    if action not in ACTIONS:
        abort(404)
    _same_origin()
    who = caller().dn or "anonymous"
    try:
        with Session(_runtime().engine) as session, session.begin():
            if action == "retry":
                moved = retry.retry_failed(session, productions.get(session, name), who, [],
                                           None)
                message = f"{len(moved)} failed jobs retried"
            elif action == "approve":
                result = approval.approve(session, _runtime().config, name, who)
                message = f"approved: production is {result['state']}, " \
                          f"{result['jobs_made']} jobs made"
            else:
                result = productions.control(session, name, action, who)
                message = f"{action}: production is {result['state']}"
    except GridtowerError as error:
        message = f"{action} refused: {error}"
    return redirect(url_for("pages.production", name=name, message=message), code=303)


def _same_origin() -> None:
    """Refuse a form posted from another site (a page there cannot make the browser act
    with this user's certificate)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or urlsplit(origin).netloc != request.host:
        raise Forbidden("actions are taken from the tower's own pages")


# -- sites --------------------------------------------------------------------------------------

@pages.get("/sites/<name>")
@needs(Permission.READ)
def site(name: str) -> str:
    runtime = _runtime()
    if name not in runtime.config.sites:
        abort(404)
    config = runtime.config.sites[name]
    rows, broker_error = site_queues(runtime)
    queues = [row for row in rows if row["site"] == name]
    with Session(runtime.engine) as session:
        failures = session.exec(
            select(Attempt).where(Attempt.site == name, col(Attempt.ended_at).is_not(None),
                                  col(Attempt.outcome).not_in([str(o) for o in NOT_FAILURES]))
            .order_by(col(Attempt.id).desc()).limit(20)).all()
        decisions = factory.recent_decisions(session, name, 10)
        health = session.get(SiteHealth, name)
        window = site_history.window_of(request.args.get("window"))
        shown = site_history.site_plots(site_history.site_data(session, name, window))
    running = sum(row["pilots"].get(PilotState.RUNNING, 0)
                  + row["pilots"].get(PilotState.DRAINING, 0) for row in queues)
    limit = config.limits.max_running * len(config.queues)
    return render_template(
        "site.html", name=name, config=config, queues=queues, broker_error=broker_error,
        failures=failures, decisions=decisions, health=health,
        cooling=any(row["cooling_until"] for row in queues),
        utilisation=(running / limit) if limit else None, running=running, limit=limit,
        window=window, windows=list(site_history.WINDOWS), site_plots=shown)


# -- jobs ---------------------------------------------------------------------------------------

@pages.get("/jobs")
@needs(Permission.READ)
def job_list() -> str:
    args = request.args
    production_name, state, site_name = (args.get("production") or None, args.get("state")
                                         or None, args.get("site") or None)
    if state is not None and state not in STATE_COLOURS:
        abort(400, f"state: no state {state!r}")
    after, limit = whole_number("after", 0, 0), whole_number("limit", PAGE, 1, 1000)
    with Session(_runtime().engine) as session:
        found = jobs.page(session, production_name, state, site_name, after, limit)
        names = [p.name for p in productions.all_productions(session)]
        total = None
        if production_name and not site_name and production_name in names:
            counts = productions.state_counts(session, productions.get(
                session, production_name).id)
            states = next(iter(counts.values()), {})
            total = states.get(state, 0) if state else sum(states.values())
    return render_template("jobs.html", page=found, names=names,
                           sites=list(_runtime().config.sites), total=total,
                           chosen={"production": production_name, "state": state,
                                   "site": site_name,
                                   "limit": limit if "limit" in args else None})


@pages.get("/jobs/<int:job_id>")
@needs(Permission.READ)
def job(job_id: int) -> str:
    runtime = _runtime()
    with Session(runtime.engine) as session:
        shown = jobs.show(session, job_id)
        outputs = session.exec(select(Output).where(Output.job_id == job_id)
                               .order_by(col(Output.attempt), col(Output.name))).all()
        cataloged = files.describe(session, [col(CatalogFile.job_id) == job_id])
        explained = why.explain(session, runtime.config, job_id)
        full_logs = attempt_logs.find(session, job_id)
    return render_template("job.html", job=shown, outputs=outputs, cataloged=cataloged,
                           why=explained, full_logs=full_logs,
                           terminal=JobState(shown["state"]) in JOB_TERMINAL)


# -- pilots -------------------------------------------------------------------------------------

@pages.get("/pilots")
@needs(Permission.READ)
def pilot_list() -> str:
    site_name, state = request.args.get("site") or None, request.args.get("state") or None
    if state is not None and state not in {str(s) for s in PilotState}:
        abort(400, f"state: no pilot state {state!r}")
    with Session(_runtime().engine) as session:
        rows = fleet.listing(session, site_name, state, PAGE)
    return render_template("pilots.html", pilots=rows, sites=list(_runtime().config.sites),
                           pilot_states=[str(s) for s in PilotState],
                           chosen={"site": site_name, "state": state})


# -- catalog ------------------------------------------------------------------------------------

@pages.get("/catalog")
@needs(Permission.READ)
def catalog() -> str:
    with Session(_runtime().engine) as session:
        return render_template("catalog.html", datasets=files.datasets(session))


@pages.get("/catalog/datasets/<path:name>")
@needs(Permission.READ)
def dataset(name: str) -> str:
    after = request.args.get("after", "")
    with Session(_runtime().engine) as session:
        entry = files.get_dataset(session, name)
        shown = files.describe(session, [col(CatalogFile.dataset_id) == entry.id,
                                         col(CatalogFile.lfn) > after], limit=PAGE)
        made_by = session.get(Production, entry.production_id) if entry.production_id else None
    return render_template("dataset.html", dataset=entry, files=shown, made_by=made_by,
                           next_after=shown[-1]["lfn"] if len(shown) == PAGE else None)


@pages.get("/catalog/files/<path:lfn>")
@needs(Permission.READ)
def catalog_file(lfn: str) -> str:
    """One file: how it was made (its provenance record) and the command that remakes it."""
    with Session(_runtime().engine) as session:
        shown = provenance.described(session, "/" + lfn.lstrip("/"))
    return render_template("file.html", file=shown, record=shown["provenance"])


@pages.get("/catalog/find")
@needs(Permission.READ)
def find() -> str:
    texts = [text for text in request.args.getlist("q") if text.strip()]
    found: list[dict[str, Any]] = []
    error = None
    if texts:
        try:
            conditions = queries.parse_conditions(texts)
            with Session(_runtime().engine) as session:
                found = queries.find(session, conditions, PAGE + 1)
        except GridtowerError as exc:
            error = str(exc)
    with Session(_runtime().engine) as session:
        names = [name for (name,) in session.execute(
            select(Dataset.name).order_by(col(Dataset.name))).all()]
    return render_template("find.html", texts=texts, found=found[:PAGE], more=len(found) > PAGE,
                           error=error, datasets=names)
