"""A production's summary plots over HTTP: their numbers in the API, and each plot as a
download (SVG, PNG, CSV, JSON) beside the production page; both from `web.summary`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlmodel import Session

from tower.auth.access import Permission
from tower.management import productions
from tower.runtime import Runtime
from web import summary
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
