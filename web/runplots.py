"""The plots' numbers over HTTP: a production's summary plots in the API, and each as a
download (SVG, PNG, CSV, JSON) beside the production page, both from `web.summary`; and a
site's history over a window (`web.site_history`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlmodel import Session

from tower.auth.access import Permission
from tower.errors import NotFound
from tower.management import productions
from tower.runtime import Runtime
from web import site_history, summary
from web.auth import needs

runplots = Blueprint("runplots", __name__)


def _runtime() -> Runtime:
    return current_app.extensions["gridtower"]  # type: ignore[no-any-return]


def _data(name: str, plot: str) -> dict[str, Any]:
    with Session(_runtime().engine) as session:
        return summary.plot_data(session, productions.get(session, name), plot)


@runplots.get("/api/v1/productions/<name>/plots")
@needs(Permission.READ)
def plot_names(name: str) -> Any:
    """The summary plots of a production, by name."""
    with Session(_runtime().engine) as session:
        productions.get(session, name)
    return jsonify({"production": name, "plots": list(summary.PLOTS)})


@runplots.get("/api/v1/productions/<name>/plots/<plot>")
@needs(Permission.READ)
def plot_numbers(name: str, plot: str) -> Any:
    """The numbers of one summary plot (bins and values) of a production."""
    return jsonify(_data(name, plot))


@runplots.get("/productions/<name>/plots/<plot>.<fmt>")
@needs(Permission.READ)
def download(name: str, plot: str, fmt: str) -> Any:
    """One summary plot as a file: svg, png, csv or json."""
    data = _data(name, plot)
    body = summary.render(data, fmt)
    return Response(body, mimetype=summary.FORMATS[fmt], headers={
        "Content-Disposition": f'attachment; filename="{plot}.{fmt}"'})


@runplots.get("/api/v1/sites/<name>/history")
@needs(Permission.READ)
def site_numbers(name: str) -> Any:
    """A site over `?window=` 1h, 24h (the default), 7d or 30d: jobs and events done,
    failures by class, pilots by state, slots busy and the factory's decisions per bin."""
    runtime = _runtime()
    if name not in runtime.config.sites:
        raise NotFound(f"no site {name!r}", field="site")
    window = site_history.window_of(request.args.get("window"))
    with Session(runtime.engine) as session:
        return jsonify(site_history.site_data(session, name, window))
