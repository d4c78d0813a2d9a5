"""HTTPS with client certificates on loopback: real handshakes, certificates from tower/auth/ca.py.

The server is the tower's own (`web.server.start_server`), serving a small Flask app
that answers with what `web.identity.identity()` says of the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify, request

from tests.conftest import tls_api, write_home
from tower.auth import ca
from tower.config import load_config
from tower.runtime import Runtime
from web.identity import identity
from web.server import ApiServer, start_server

ALICE = "CN=alice,OU=users,O=gridtower"
BOB = "CN=bob,OU=robots,O=gridtower"
PROXIED = "CN=carol,OU=users,O=gridtower"

Cert = tuple[str, str]


def issued(ca_dir: Path, kind: ca.Kind, name: str) -> Cert:
    cert, key = ca.issue(ca_dir, kind, name, days=1)
    return str(cert), str(key)


@dataclass
class Pki:
    home: Path
    ca_dir: Path
    ca_cert: str
    alice: Cert
    bob: Cert

    def credential(self, pem: bytes, name: str) -> str:
        """A pilot's in-memory credential, written as the pilot would keep it."""
        path = self.home / f"{name}.pem"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(pem)
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    home = tmp_path / "home"
    files = ca.init_ca(home / "ca", "test CA")
    ca.issue(files.directory, "host", "server", days=1, hosts=["127.0.0.1", "localhost"])
    ca_dir = files.directory
    return Pki(home, ca_dir, str(files.cert), alice=issued(ca_dir, "user", "alice"),
               bob=issued(ca_dir, "robot", "bob"))


def whoami_app() -> Flask:
    app = Flask(__name__)

    @app.get("/whoami")
    def whoami() -> Any:
        return jsonify(identity=identity(), header=request.headers.get("X-Client-DN"))

    return app


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[..., str]]:
    """Start the tower's server with `api` settings (TLS unless tls=False); its /whoami URL."""
    servers: list[ApiServer] = []

    def start(tls: bool = True, **api: Any) -> str:
        settings = tls_api(**api) if tls else {"bind": "127.0.0.1", "port": 0, **api}
        config = load_config(write_home(pki.home, "sqlite:///tower.db", api=settings))
        server, url = start_server(config)
        servers.append(server)
        server.serve(whoami_app())
        return f"{url}/whoami"

    yield start
    for server in servers:
        server.shutdown()


def whoami(pki: Pki, url: str, cert: Cert | str | None = None,
           **headers: str) -> dict[str, Any]:
    response = requests.get(url, verify=pki.ca_cert, cert=cert, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def refused(pki: Pki, url: str, cert: Cert | str) -> bool:
    try:
        whoami(pki, url, cert)
    except requests.exceptions.SSLError:
        return True
    return False


def test_a_client_certificate_reaches_the_app_as_its_subject(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve()

    assert url.startswith("https://127.0.0.1:")
    assert whoami(pki, url, pki.alice) == {"identity": ALICE, "header": None}
    assert whoami(pki, url, pki.bob)["identity"] == BOB


def test_a_pilot_credential_made_in_memory_is_a_client_certificate(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve()
    credential = pki.credential(ca.issue_pilot_credential(pki.ca_dir, "nersc", "7b3e", 600),
                                "pilot")

    assert whoami(pki, url, credential)["identity"] == \
        "CN=pilot 7b3e,OU=pilots,OU=site nersc,O=gridtower"


def test_without_a_certificate_the_request_goes_on_anonymous(
        pki: Pki, serve: Callable[..., str]) -> None:
    assert whoami(pki, serve()) == {"identity": None, "header": None}


def test_an_expired_certificate_is_refused_at_the_handshake(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve()
    credential = pki.credential(ca.issue_pilot_credential(pki.ca_dir, "nersc", "old", 1),
                                "expired")
    time.sleep(1.5)

    assert refused(pki, url, credential)


def test_a_certificate_of_another_ca_is_refused_at_the_handshake(
        pki: Pki, serve: Callable[..., str], tmp_path: Path) -> None:
    url = serve()
    other = ca.init_ca(tmp_path / "other", "another CA").directory

    assert refused(pki, url, issued(other, "user", "alice"))


def test_a_server_certificate_is_no_client_certificate(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve()

    assert refused(pki, url, issued(pki.ca_dir, "host", "tower.example.org"))


def test_a_certificate_revoked_while_serving_is_refused_within_seconds(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve()
    assert whoami(pki, url, pki.alice)["identity"] == ALICE

    ca.revoke(pki.ca_dir, pki.alice[0])

    deadline = time.monotonic() + 10
    while not refused(pki, url, pki.alice):
        assert time.monotonic() < deadline, "the revocation did not take effect in 10 s"
        time.sleep(0.2)
    assert whoami(pki, url, pki.bob)["identity"] == BOB


def test_plain_http_to_the_tls_port_reaches_no_app(pki: Pki, serve: Callable[..., str]) -> None:
    url = serve().replace("https://", "http://")

    try:
        response = requests.get(url, timeout=10)
    except requests.exceptions.ConnectionError:
        return  # the server hung up
    assert response.status_code == 400 and "only speaks HTTPS" in response.text


def test_an_identity_header_from_an_untrusted_address_is_ignored(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve(trusted_proxies=["10.1.2.3"])

    assert whoami(pki, url, pki.alice, **{"X-Client-DN": PROXIED}) == {
        "identity": ALICE, "header": None}
    assert whoami(pki, url, **{"X-Client-DN": PROXIED}) == {"identity": None, "header": None}


def test_a_trusted_proxy_names_the_caller_in_its_header(
        pki: Pki, serve: Callable[..., str]) -> None:
    url = serve(trusted_proxies=["127.0.0.1"], identity_header="X-SSL-Client-S-DN")

    assert whoami(pki, url, pki.alice, **{"X-SSL-Client-S-DN": PROXIED})["identity"] == PROXIED
    # the proxy speaks for a client without a certificate: not for itself
    assert whoami(pki, url, pki.alice)["identity"] is None
    # a DN that does not parse names nobody
    assert whoami(pki, url, **{"X-SSL-Client-S-DN": "/DC=org/CN=old style"})["identity"] \
        is None


def test_plain_http_behind_a_trusted_proxy(pki: Pki, serve: Callable[..., str]) -> None:
    url = serve(tls=False, trusted_proxies=["127.0.0.1"])

    assert url.startswith("http://127.0.0.1:")
    assert whoami(pki, url, **{"X-Client-DN": PROXIED}) == {"identity": PROXIED, "header": None}
    assert whoami(pki, serve(tls=False), **{"X-Client-DN": PROXIED}) == {
        "identity": None, "header": None}


@pytest.mark.parametrize("tls", [False, True])
def test_the_tower_app_is_served(pki: Pki, tls: bool) -> None:
    """The real app, bound as `tower run` binds it; over TLS a path no view serves, so the
    answer does not hang on who may read what."""
    settings = tls_api(crl=False) if tls else {"bind": "127.0.0.1", "port": 0}
    config = load_config(write_home(pki.home, "sqlite:///tower.db", api=settings))
    server, url = start_server(config)
    runtime = Runtime.open(config)
    try:
        server.bind(runtime)
        if tls:
            response = requests.get(f"{url}/api/v1/nothing-here", verify=pki.ca_cert,
                                    cert=pki.alice, timeout=10)
            assert (response.status_code, response.json()["error"]) == (404, "Not Found")
        else:
            response = requests.get(f"{url}/api/v1/productions", timeout=10)
            assert (response.status_code, response.json()) == (200, {"productions": []})
    finally:
        server.shutdown()
        runtime.close()
    assert not server.thread.is_alive()
