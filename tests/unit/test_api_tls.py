"""api.tls, api.trusted_proxies and api.identity_header: loaded, resolved, refused with
their key named; the TLS context built from them; the proxy's identity header."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tls_api, write_home
from tower.auth import ca
from tower.config import TowerConfig, load_config
from tower.errors import ConfigError
from web.identity import ENVIRON_KEY, ProxiedIdentity
from web.server import start_server
from web.tls import server_context

TLS = tls_api()["tls"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ca.init_ca(tmp_path / "ca", "test CA")
    ca.issue(tmp_path / "ca", "host", "server", days=1, hosts=["127.0.0.1"])
    return tmp_path


def load(home: Path, **api: Any) -> TowerConfig:
    return load_config(write_home(home, "sqlite:///tower.db", api=api))


def test_tls_paths_are_relative_to_tower_yaml(home: Path) -> None:
    config = load(home, tls=TLS, trusted_proxies=["10.0.0.1", "::0001"])

    assert config.api.tls is not None
    assert config.api.tls.cert == home / "ca" / "issued" / "server.crt"
    assert config.api.tls.crl == home / "ca" / "crl.pem"
    assert config.api.trusted_proxies == ["10.0.0.1", "::1"]
    assert config.api.identity_header == "X-Client-DN"
    assert config.api_url.startswith("https://")


def test_without_tls_the_api_speaks_http(home: Path) -> None:
    config = load(home)

    assert (config.api.tls, config.api.trusted_proxies) == (None, [])
    assert config.api_url.startswith("http://")


@pytest.mark.parametrize(("api", "message"), [
    ({"tls": {**TLS, "ca_bundle": "nowhere.pem"}},
     r"tower.yaml: api.tls.ca_bundle: .*nowhere.pem: no such file"),
    ({"tls": {**TLS, "crl": "ca/none.pem"}}, r"api.tls.crl: .*none.pem: no such file"),
    ({"tls": {key: value for key, value in TLS.items() if key != "key"}},
     r"api.tls.key: required key is missing"),
    ({"trusted_proxies": ["proxy.example.org"]},
     r"api.trusted_proxies: .*does not appear to be an IPv4 or IPv6 address"),
    ({"identity_header": "X Client DN"}, r"api.identity_header: String should match"),
])
def test_refusals_name_the_key(home: Path, api: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(home, **api)


def test_a_server_key_others_may_read_is_refused(home: Path) -> None:
    (home / "ca" / "issued" / "server.key").chmod(0o640)

    with pytest.raises(ConfigError, match=r"api.tls.key: .*server.key has mode 0640"):
        load(home, tls=TLS)


def test_the_context_verifies_clients_against_the_bundle_and_the_crl(home: Path) -> None:
    tls = load(home, tls=TLS).api.tls
    assert tls is not None

    context = server_context(tls)

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.cert_store_stats()["x509_ca"] == 1
    assert context.cert_store_stats()["crl"] == 1


def test_a_bundle_directory_gives_every_ca_in_it(home: Path) -> None:
    bundle = home / "bundle"
    bundle.mkdir()
    for name in ("one", "two"):
        (bundle / f"{name}.pem").write_bytes(ca.init_ca(home / name, name).cert.read_bytes())
    (bundle / "one.info").write_text("not read\n")
    tls = load(home, tls={**TLS, "ca_bundle": "bundle"}).api.tls
    assert tls is not None

    assert server_context(tls).cert_store_stats()["x509_ca"] == 2


@pytest.mark.parametrize(("setting", "content", "message"), [
    ("crl", "not a CRL\n", r"api.tls.crl: .*bad: cannot load"),
    ("ca_bundle", "", r"api.tls.ca_bundle: .*bad: cannot load"),
])
def test_unreadable_files_are_named(home: Path, setting: str, content: str,
                                    message: str) -> None:
    (home / "bad").write_text(content)
    tls = load(home, tls={**TLS, setting: "bad"}).api.tls
    assert tls is not None

    with pytest.raises(ConfigError, match=message):
        server_context(tls)


def test_an_empty_bundle_directory_is_refused(home: Path) -> None:
    (home / "empty").mkdir()
    tls = load(home, tls={**TLS, "ca_bundle": "empty"}).api.tls
    assert tls is not None

    with pytest.raises(ConfigError, match=r"api.tls.ca_bundle: .*empty: no .pem, .crt file"):
        server_context(tls)


@pytest.mark.parametrize(("remote", "header", "seen"), [
    ("10.0.0.1", "CN=carol,O=gridtower", "CN=carol,O=gridtower"),
    ("::ffff:10.0.0.1", "CN=carol,O=gridtower", "CN=carol,O=gridtower"),
    ("10.0.0.1", "/DC=org/CN=carol", None),
    ("10.0.0.1", None, None),
    ("10.0.0.1", " ", None),
    ("10.0.0.2", "CN=carol,O=gridtower", "from TLS"),
    # as nginx's $ssl_client_s_dn prints them (OpenSSL's RFC 2253 form): OpenSSL's names
    # of attributes RFC 4514 lacks, UTF-8 as escaped bytes; written as the TLS layer would
    ("10.0.0.1", "emailAddress=carol@example.org,CN=carol,O=gridtower",
     "1.2.840.113549.1.9.1=carol@example.org,CN=carol,O=gridtower"),
    ("10.0.0.1", "CN=carol,serialNumber=42,SN=Jones,GN=Carol,O=gridtower",
     "CN=carol,2.5.4.5=42,2.5.4.4=Jones,2.5.4.42=Carol,O=gridtower"),
    ("10.0.0.1", r"CN=Jos\C3\A9 Mu\C3\B1oz,O=gridtower", "CN=José Muñoz,O=gridtower"),
])
def test_the_proxy_header_counts_from_trusted_addresses_alone(
        remote: str, header: str | None, seen: str | None) -> None:
    environs: list[dict[str, Any]] = []
    app = ProxiedIdentity(lambda environ, start: environs.append(environ) or [],
                          ["10.0.0.1"], "X-Client-DN")
    environ: dict[str, Any] = {"REMOTE_ADDR": remote, ENVIRON_KEY: "from TLS"}
    if header is not None:
        environ["HTTP_X_CLIENT_DN"] = header

    app(environ, lambda status, headers: lambda data: None)  # type: ignore[arg-type]

    assert environs[0][ENVIRON_KEY] == seen
    assert "HTTP_X_CLIENT_DN" not in environs[0]


def test_ctrl_c_in_a_join_still_stops_the_server_before_its_socket_closes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`tower serve` waits in `thread.join()`; on Python 3.11 a Ctrl-C there leaves the
    thread marked stopped while it serves: shutdown() must not take that for its end (it
    closed the socket under the running event loop, which logged a traceback)."""
    server, _ = start_server(load_config(write_home(tmp_path, "sqlite:///x.db")))
    server.serve(lambda environ, start: [])
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with caplog.at_level(logging.ERROR):
        try:
            with pytest.raises(KeyboardInterrupt):
                server.thread.join()
        finally:
            server.shutdown()
        loop = server._front._loop if server._front else None
        assert loop is not None and loop.is_closed()  # the event loop ended first
    assert [record.getMessage() for record in caplog.records] == []


def test_serve_listens_where_its_command_line_says_checked_as_tower_yaml(home: Path) -> None:
    config = load(home, tls=TLS, trusted_proxies=["127.0.0.2"])

    moved = config.listening_on(None, 8472)
    assert (moved.api.bind, moved.api.port, moved.api.trusted_proxies) == (
        "127.0.0.1", 8472, ["127.0.0.2"])
    assert moved.api.tls == config.api.tls
    assert config.listening_on("0.0.0.0", None).api.bind == "0.0.0.0"  # HTTPS: allowed
    plain = load(home)
    with pytest.raises(ConfigError, match=r"with the command line: api: api.bind 0.0.0.0 is "
                                          r"reachable from other hosts"):
        plain.listening_on("0.0.0.0", None)
