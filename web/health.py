"""`/healthz` and `/readyz`, for load balancers and systemd, without a certificate.

`/healthz`: the process serves (and its loop threads live): no database, no broker.
`/readyz`: the database and the broker answer, and the loops cycle (this process's, or in
an API-only process every loop of the tower, from the rows the loop processes keep: see
tower.loops.liveness); `?exclude=loops` leaves a check out, e.g. for an API process that
should stay behind its proxy while the loop processes are away. Both answer JSON, 200 when
every check is ok and 503 otherwise: `{"status": "ok"|"failing", "checks": {NAME: {"ok":
bool, "reason": "..."}}}`. Reasons are a few words (no host, user or path); the detail
goes to the log once, when a check turns failing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from tower.auth.access import Permission
from tower.errors import GridtowerError
from tower.loops import liveness
from web.auth import needs

health = Blueprint("health", __name__)

#: Checks /readyz makes, which `?exclude=` may name.
READY_CHECKS = ("database", "broker", "loops")


class UnknownCheck(GridtowerError):
    status = 400


@health.get("/healthz")
@needs(Permission.PUBLIC)
def healthz() -> Any:
    """Liveness: the process serves (and its loop threads live); no database."""
    return _answer(liveness.health(current_app.extensions["gridtower"]))


@health.get("/readyz")
@needs(Permission.PUBLIC)
def readyz() -> Any:
    """Readiness: the database and the broker answer, the loops cycle; `?exclude=NAME`
    (repeatable) leaves a check out."""
    excluded = request.args.getlist("exclude")
    for name in excluded:
        if name not in READY_CHECKS:
            raise UnknownCheck(f"exclude: no check {name[:40]!r} (checks: "
                               f"{', '.join(READY_CHECKS)})", field="exclude")
    checks = current_app.extensions["gridtower.probe"]()
    return _answer({name: check for name, check in checks.items() if name not in excluded})


def _answer(checks: dict[str, liveness.Check]) -> Any:
    ok = all(check.ok for check in checks.values())
    body = {"status": "ok" if ok else "failing",
            "checks": {name: check.public() for name, check in checks.items()}}
    return jsonify(body), 200 if ok else 503
