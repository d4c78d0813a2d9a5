"""Attempts' full logs over HTTP: a pilot sends the log of an attempt it ran (gzip, its
site's bound), and people read it whole beside the job page (`tower.loops.attempt_logs`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlmodel import Session

from tower.auth.access import Permission
from tower.loops import attempt_logs
from tower.model.db import transaction
from tower.runtime import Runtime
from web.auth import needs
from web.bounds import whole_number

logs = Blueprint("logs", __name__)

#: Largest `cut` a pilot may report (bytes left out of a log).
MAX_CUT = 1 << 50


def _runtime() -> Runtime:
    return current_app.extensions["gridtower"]  # type: ignore[no-any-return]


@logs.post("/api/v1/pilots/<pilot_id>/logs/<int:job_id>/<int:attempt>")
@needs(Permission.PILOT)
def ship(pilot_id: str, job_id: int, attempt: int) -> Any:
    """A pilot's gzipped full log (stdout and stderr) of one of its attempts, once;
    `?cut=N`: the bytes it left out of the log's middle."""
    cut = whole_number("cut", 0, 0, MAX_CUT)
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        entry = attempt_logs.accept(session, runtime, pilot_id, job_id, attempt,
                                    request.get_data(cache=False), cut)
        return jsonify({"job": job_id, "attempt": attempt, "size": entry.size,
                        "compressed": entry.compressed, "truncated": entry.truncated})


@logs.get("/jobs/<int:job_id>/attempts/<int:attempt>/log")
@needs(Permission.READ)
def whole(job_id: int, attempt: int) -> Any:
    """An attempt's whole log, as plain text."""
    runtime = _runtime()
    with Session(runtime.engine) as session:
        text = attempt_logs.read(session, runtime, job_id, attempt)
    return Response(text, mimetype="text/plain", headers={
        "Content-Disposition": f'inline; filename="job{job_id}.{attempt}.log"',
        "X-Content-Type-Options": "nosniff"})
