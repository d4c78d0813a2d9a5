"""`create_app`: the Flask application of the tower."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from tower.errors import GridtowerError
from tower.runtime import Runtime
from tower.timeutil import jsonable
from web import auth
from web.api import api
from web.metrics import metrics

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
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(metrics)
    auth.install(app)

    @app.errorhandler(GridtowerError)
    def _library_error(error: GridtowerError) -> Any:
        return jsonify(error.as_dict()), error.status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Any:
        body = {"error": error.name, "message": error.description, "field": None}
        return jsonify(body), error.code

    return app
