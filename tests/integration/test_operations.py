"""Running the tower for years: /healthz and /readyz against real faults (a broker that
refuses the tower's user or is not there, a loop blocked on a database lock), and the loops
of another process judged from the database."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import text

from tests.conftest import rabbitmqctl
from tests.integration.conftest import LiveTower
from tower.config import load_config
from tower.loops import daemon, liveness
from tower.runtime import Runtime

pytestmark = pytest.mark.one_database


def get(tower: LiveTower, path: str) -> tuple[int, dict[str, Any]]:
    answer = requests.get(tower.runtime.config.api_url + path, timeout=30)
    return answer.status_code, answer.json()


def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout}s")
        time.sleep(0.2)


def ready(tower: LiveTower, path: str = "/readyz") -> int:
    time.sleep(liveness.PROBE_REUSE)  # an answer is reused for a second
    return get(tower, path)[0]


@pytest.fixture
def looping(live_tower: Callable[..., LiveTower]) -> Iterator[Callable[..., LiveTower]]:
    """A live tower whose loops run in threads, as in `tower run`."""
    stops: list[tuple[LiveTower, threading.Event, list[threading.Thread]]] = []

    def make(**settings: Any) -> LiveTower:
        tower = live_tower(**settings)
        stop = threading.Event()
        stops.append((tower, stop, daemon.run_forever(tower.runtime, stop)))
        return tower

    yield make
    for tower, stop, threads in stops:
        daemon.halt(tower.runtime, stop)
        for thread in threads:
            thread.join(timeout=30)


def test_healthz_and_readyz_say_ok_while_everything_answers(
        looping: Callable[..., LiveTower]) -> None:
    tower = looping()
    status, body = get(tower, "/healthz")
    assert status == 200 and body == {"status": "ok", "checks": {"process": {"ok": True},
                                                                 "loops": {"ok": True}}}
    until(lambda: ready(tower) == 200)
    status, body = get(tower, "/readyz")
    assert body == {"status": "ok", "checks": {name: {"ok": True} for name in
                                               ("database", "broker", "loops")}}


def test_readyz_is_503_while_the_broker_refuses_the_towers_user_and_ok_again_after(
        looping: Callable[..., LiveTower], amqp_url: str, rabbit_user: tuple[str, str]
) -> None:
    tower = looping(broker=amqp_url)
    until(lambda: ready(tower) == 200)
    vhost = amqp_url.rsplit("/", 1)[1]
    rabbitmqctl("clear_permissions", "-p", vhost, rabbit_user[0])
    try:
        until(lambda: ready(tower) == 503)
        status, body = get(tower, "/readyz")
        assert body["checks"]["broker"] == {"ok": False, "reason": "unreachable"}
        assert body["checks"]["database"] == {"ok": True}
        assert rabbit_user[0] not in str(body) and "127.0.0.1" not in str(body)
        assert get(tower, "/healthz")[0] == 200  # the process itself is fine
    finally:
        rabbitmqctl("set_permissions", "-p", vhost, rabbit_user[0], ".*", ".*", ".*")
    until(lambda: ready(tower) == 200)


def test_readyz_is_503_when_the_broker_is_not_there(looping: Callable[..., LiveTower]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        tower = looping(broker=f"amqp://guest:secret@127.0.0.1:{port}/")
        until(lambda: ready(tower) == 503)
        body = get(tower, "/readyz")[1]
    assert body["status"] == "failing"
    assert body["checks"]["broker"] == {"ok": False, "reason": "unreachable"}
    assert "secret" not in str(body)


def test_readyz_is_503_while_a_loop_is_stuck_on_a_lock(
        looping: Callable[..., LiveTower], database_url: str) -> None:
    tower = looping(loops={"interval": 0, "stall_after": 2})
    until(lambda: ready(tower) == 200)
    # another client holds the table the monitor reads every cycle: the monitor waits
    with tower.runtime.engine.connect() as blocker:
        blocker.execute(text("BEGIN"))
        blocker.execute(text("LOCK TABLE sitehealth IN ACCESS EXCLUSIVE MODE"))
        until(lambda: ready(tower) == 503)
        body = get(tower, "/readyz")[1]
        assert body["checks"]["loops"]["ok"] is False
        assert "monitor: no cycle ended for" in body["checks"]["loops"]["reason"]
        assert body["checks"]["database"] == {"ok": True}
        assert get(tower, "/healthz")[0] == 200  # its thread lives
        blocker.execute(text("ROLLBACK"))
    until(lambda: ready(tower) == 200)


def test_an_api_only_process_judges_the_loops_of_another_process_from_the_database(
        live_tower: Callable[..., LiveTower]) -> None:
    tower = live_tower(loops={"interval": 0, "stall_after": 2})  # no loops of its own
    assert ready(tower) == 503
    body = get(tower, "/readyz")[1]
    assert body["checks"]["loops"]["reason"].startswith("no tower process has run matchmaker")
    assert ready(tower, "/readyz?exclude=loops") == 200
    assert requests.get(tower.runtime.config.api_url + "/readyz?exclude=disk",
                        timeout=10).status_code == 400
    # a loop process on the same database (`tower run --no-api`)
    other = Runtime.open(load_config(tower.home / "tower.yaml"))
    stop, hangup = threading.Event(), threading.Event()
    threads = daemon.run_forever(other, stop)
    liveness.keep(other, stop, hangup, lambda: None)
    try:
        until(lambda: ready(tower) == 200)
    finally:
        daemon.halt(other, stop)
        for thread in threads:
            thread.join(timeout=30)
    # its loops stopped: after interval + stall_after (+ the rows' slack) they are stale
    until(lambda: ready(tower) == 503, timeout=30)
    assert "no cycle ended for" in get(tower, "/readyz")[1]["checks"]["loops"]["reason"]
    other.close()


def test_the_openapi_document_describes_healthz_and_readyz_at_the_root(
        live_tower: Callable[..., LiveTower]) -> None:
    tower = live_tower()
    document = requests.get(tower.runtime.config.api_url + "/api/v1/openapi.json",
                            timeout=10).json()
    for path in ("/healthz", "/readyz"):
        assert document["paths"][path]["servers"] == [{"url": "/"}]
        operation = document["paths"][path]["get"]
        assert operation["x-permission"] == "public"
        assert set(operation["responses"]) >= {"200", "503"}
    assert document["components"]["schemas"]["Health"]["required"] == ["status", "checks"]
