"""How long this process takes to answer, per kind of caller, for /metrics: a histogram
of request seconds labelled by the blueprint that answered (a handful of values, so the
label stays bounded whatever the URLs), and whether the answer was an error."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Histogram

#: Seconds an answer took, by blueprint (api, pages, metrics, ...) and status class.
LATENCY = Histogram("gridtower_api_request_seconds", "Seconds the tower took to answer a "
                    "request, by the part of the tower that answered and the status class",
                    ["blueprint", "status"], registry=None,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_record)


def _start() -> None:
    g.request_began = time.monotonic()


def _record(response: Response) -> Response:
    began = g.get("request_began")
    if began is not None:
        # a pilot's call is the API's too, but its load is the pilots': told apart
        part = request.blueprint or "none"
        if part == "api" and (request.view_args or {}).get("pilot_id") is not None:
            part = "pilot"
        LATENCY.labels(part, f"{response.status_code // 100}xx").observe(
            time.monotonic() - began)
    return response
