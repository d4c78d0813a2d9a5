"""`create_app`: the Flask application of the tower."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from catalog.timeutil import jsonable
from tower.errors import GridtowerError
from tower.loops.liveness import Probe
from tower.runtime import Runtime
from web import auth, bounds, latency
from web.api import api
from web.health import health
from web.logs import logs
from web.metrics import metrics
from web.pages import pages
from web.runplots import runplots

log = logging.getLogger(__name__)

#: Largest request body the API accepts.
MAX_BODY_BYTES = 8 * 1024 * 1024


class JsonProvider(DefaultJSONProvider):
    """Times in answers as ISO 8601, as the CLI prints them."""

    default = staticmethod(jsonable)  # type: ignore[assignment]


def create_app(runtime: Runtime) -> Flask:
    app = Flask(__name__)
    app.json = JsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["gridtower"] = runtime
    app.extensions["gridtower.probe"] = Probe(runtime)
    bounds.install(app)  # before the routes: it bounds their <int:> parts
    latency.install(app)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(metrics)
    app.register_blueprint(health)
    app.register_blueprint(pages)
    app.register_blueprint(runplots)
    app.register_blueprint(logs)
    auth.install(app)

    @app.errorhandler(GridtowerError)
    def _library_error(error: GridtowerError) -> Any:
        if request.blueprint == "pages":
            return _error_page(error.status, type(error).__name__, str(error))
        return jsonify(error.as_dict()), error.status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Any:
        if request.blueprint == "pages":
            return _error_page(error.code or 500, error.name, error.description or "")
        body = {"error": error.name, "message": error.description, "field": None}
        return jsonify(body), error.code

    return app


def _error_page(status: int, title: str, message: str) -> Any:
    """People reading the pages get an error as a page, scripts as JSON."""
    return render_template("error.html", status=status, title=title, message=message), status
