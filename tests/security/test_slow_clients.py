"""Slow and silent clients against a live tower on loopback (issue 17, items 2 and 3): no
certificate is needed to send them, and a legitimate client with one is answered
throughout. The old server (cheroot) failed each: it shook hands in its one accepting
thread and gave every connection one of ten workers from its first byte."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import tls_api, write_home
from tests.integration.conftest import LiveTower
from tests.security.attacks import ask, idle_connections, slow_headers
from tower.auth import ca
from web.app import MAX_BODY_BYTES

pytestmark = pytest.mark.one_database  # the serving stack does not depend on the database

PROBES = 5


class Tower:
    def __init__(self, live: LiveTower, tls: bool, home: Path) -> None:
        self.live = live
        self.tls = tls
        self.port = int(live.server.url.rsplit(":", 1)[1])
        self.url = f"{live.server.url}/api/v1/productions"
        self.verify = str(home / "ca" / "ca.crt") if tls else True
        self.cert = (str(home / "ca" / "issued" / "reader.crt"),
                     str(home / "ca" / "issued" / "reader.key")) if tls else None

    def probe(self) -> int:
        """One request of a legitimate client (a reader's certificate over TLS)."""
        response = requests.get(self.url, verify=self.verify, cert=self.cert, timeout=10)
        return response.status_code


@pytest.fixture
def tower(tmp_path: Path) -> Iterator[Callable[..., Tower]]:
    made: list[LiveTower] = []

    def start(tls: bool, **limits: Any) -> Tower:
        home = tmp_path / f"home{len(made)}"
        ca.init_ca(home / "ca", "test CA")
        ca.issue(home / "ca", "host", "server", days=1, hosts=["127.0.0.1"])
        ca.issue(home / "ca", "user", "reader", days=1)
        api = tls_api(limits=limits) if tls else {"bind": "127.0.0.1", "port": 0,
                                                  "limits": limits}
        live = LiveTower(write_home(home, f"sqlite:///{home / 'tower.db'}", api=api, access={
            "roles": [{"dn": "CN=reader,OU=users,O=gridtower", "role": "reader"}]}))
        made.append(live)
        return Tower(live, tls, home)

    yield start
    for live in made:
        live.close()


def probes(tower: Tower) -> list[int]:
    """PROBES requests, one a second, each given 10 s at most by its client."""
    answers = []
    for _ in range(PROBES):
        answers.append(tower.probe())
        time.sleep(1)
    return answers


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "http"])
def test_silent_connections_delay_nobody(tower: Callable[..., Tower], tls: bool) -> None:
    served = tower(tls)
    assert served.probe() == 200

    with idle_connections(served.port, 50):
        assert probes(served) == [200] * PROBES


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "http"])
def test_headers_sent_slowly_hold_no_worker(tower: Callable[..., Tower], tls: bool) -> None:
    served = tower(tls)
    assert served.probe() == 200

    with slow_headers(served.port, 30, tls):
        time.sleep(1)  # every slow head has begun
        assert probes(served) == [200] * PROBES


def test_a_client_over_its_connection_limit_is_refused_and_others_are_not(
        tower: Callable[..., Tower]) -> None:
    served = tower(False, connections_per_client=5, head_timeout=60)

    with idle_connections(served.port, 5) as held:
        time.sleep(0.5)  # the server took them in
        assert ask(served.port) is None
        assert ask(served.port, source="127.0.0.2") == 200
        held.pop().close()
        # once one of its connections ended, the client is served again
        deadline = time.monotonic() + 10
        while (status := ask(served.port)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200


def test_a_head_that_never_ends_is_answered_408_and_closed(
        tower: Callable[..., Tower]) -> None:
    """A line every 0.5 s: no read waits long, the whole head is late all the same."""
    served = tower(False, head_timeout=3)
    answer = b""

    with idle_connections(served.port, 1) as (sock,):
        sock.sendall(b"GET /api/v1/productions HTTP/1.1\r\nHost: tower\r\n")
        sock.settimeout(0.5)
        for line in range(20):  # 10 s at most
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b"X-Slow-%d: 1\r\n" % line)

    assert answer.startswith(b"HTTP/1.1 408 ") and b"request head" in answer


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "http"])
def test_a_body_over_the_bound_gets_its_413_though_the_client_writes_it_all_first(
        tower: Callable[..., Tower], tls: bool) -> None:
    """requests writes a whole body before it reads: a server that answers 413 at the
    head and closes at once resets the connection under it (SSLEOFError over TLS, found
    by the fuzz test with a 12 MB JSON text), and the client never sees the answer. The
    front reads on and discards until the client has sent it all, then closes."""
    served = tower(tls)
    body = b"[" + b'"\\ud83c\\udffb",' * (MAX_BODY_BYTES // 14 + 1) + b"0]"
    assert len(body) > MAX_BODY_BYTES
    answers = [requests.post(served.url, data=body, verify=served.verify, cert=served.cert,
                             headers={"Content-Type": "application/json"}, timeout=60)
               for _ in range(3)]
    assert [answer.status_code for answer in answers] == [413] * 3
    assert "8388608 bytes" in answers[0].json()["message"]
    assert served.probe() == 200  # and the server serves on
