"""Shared fixtures: a tower home, a database on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ["tests.cluster", "tests.arcce"]

#: The PostgreSQL server `make test` starts; override with GRIDTOWER_TEST_POSTGRES.
POSTGRES_ADMIN = os.environ.get(
    "GRIDTOWER_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")


def missing_service(what: str) -> None:
    """Skip locally; in CI a missing service is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not available, and CI is set")
    pytest.skip(f"{what} is not available")


@contextmanager
def postgres_database(prefix: str = "test") -> Iterator[str]:
    """A fresh PostgreSQL database, named uniquely (tests run in several processes at
    once), and dropped when the block ends; its URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"gt_{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        missing_service(f"PostgreSQL at {POSTGRES_ADMIN.split('@')[-1]} ({exc})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    with postgres_database() as url:
        yield url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use a database run on SQLite and on PostgreSQL, except those marked
    `one_database`: what they test (a broker, a batch system, TLS, a flow through the
    API) does not depend on the database, and PostgreSQL is the one in production."""
    if "database_url" in metafunc.fixturenames:
        kinds = (["postgresql"] if metafunc.definition.get_closest_marker("one_database")
                 else ["sqlite", "postgresql"])
        metafunc.parametrize("database_url", kinds, indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tower.db'}"
    return str(request.getfixturevalue("postgres_url"))


def write_home(directory: Path, database_url: str, site: dict[str, Any] | None = None,
               more_sites: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Path:
    """A tower home tuned for tests: fast loops, short timeouts, no backoff."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "database": database_url, "broker": "database", "sites": "sites.yaml",
        "api": {"bind": "127.0.0.1", "port": 0},
        "loops": {"interval": 0},
        "monitor": {"heartbeat_interval": 1, "heartbeat_timeout": 6},
        # the shipped standard policy, without its waits
        "retry": {"policy": "quick", "policies": {"quick": {
            "extends": "standard", "backoff": {"initial": 0, "max": 0}}}},
        "storage": {"destinations": {"store": "local:store"}, "default": ["store"],
                    "retry_delay": 1},
    }
    config.update(settings)
    local = {
        "batch": "local",
        "pilot": {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5,
                  "idle_timeout": 3},
        "limits": {"max_queued": 2, "max_running": 2, "max_per_cycle": 2},
        "scratch": str(directory / "scratch"), "storage": str(directory / "site-storage"),
    }
    local.update(site or {})
    (directory / "tower.yaml").write_text(yaml.safe_dump(config))
    sites = {"local": local}
    for name, overrides in (more_sites or {}).items():
        sites[name] = {**local, "scratch": str(directory / name / "scratch"),
                       "storage": str(directory / name / "storage"), **overrides}
    (directory / "sites.yaml").write_text(yaml.safe_dump({"sites": sites}))
    return directory / "tower.yaml"


def tls_api(crl: bool = True, pilot_ca: bool = False, **api: Any) -> dict[str, Any]:
    """`api` settings for HTTPS on loopback with what `ca.init_ca(HOME / "ca")` and
    `ca.issue(..., "host", "server")` leave in a tower home (paths relative to tower.yaml):
    the server's certificate and key, its CA as the client bundle, its CRL (unless
    crl=False), and the CA as the pilots' (pilot_ca=True); `api` adds or overrides."""
    tls = {"cert": "ca/issued/server.crt", "key": "ca/issued/server.key",
           "ca_bundle": "ca/ca.crt"}
    if crl:
        tls["crl"] = "ca/crl.pem"
    if pilot_ca:
        tls["pilot_ca"] = "ca"
    return {"bind": "127.0.0.1", "port": 0, "tls": tls, **api}


@pytest.fixture
def tower_yaml(tmp_path: Path) -> Path:
    """A tower home on SQLite."""
    return write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tower.db'}")


#: The RabbitMQ server `make test` starts (host:port); tests make a vhost of their own there.
RABBITMQ = os.environ.get("GRIDTOWER_TEST_RABBITMQ", "127.0.0.1:5672")


def rabbitmqctl(*args: str, tries: int = 3) -> str:
    """Run rabbitmqctl against the local node (needs its Erlang cookie: run as root). On a
    loaded machine its CLI node sometimes fails to reach the broker (exit 64 seen, once in
    a few hundred calls): it is tried again, and a last failure shows what it said."""
    for attempt in range(1, tries + 1):
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode == 0:
            return done.stdout
        if attempt < tries:
            time.sleep(attempt)
    raise RuntimeError(f"rabbitmqctl {' '.join(args)}: exit {done.returncode}: "
                       f"{(done.stderr or done.stdout).strip()[-500:]}")


def rabbitmq_reachable() -> bool:
    host, _, port = RABBITMQ.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def rabbit_user() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with a password, so tests see credentials carried (and never shown).
    Each test session has a user of its own: two sessions side by side must not change
    each other's password under their running towers."""
    if not rabbitmq_reachable() or shutil.which("rabbitmqctl") is None:
        missing_service(f"RabbitMQ at {RABBITMQ} with rabbitmqctl")
    name, password = f"gridtower-test-{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
    rabbitmqctl("add_user", name, password)
    yield name, password
    rabbitmqctl("delete_user", name)


@pytest.fixture
def amqp_url(rabbit_user: tuple[str, str]) -> Iterator[str]:
    """amqp://user:password@host:port/vhost on a fresh vhost, deleted afterwards."""
    name, password = rabbit_user
    vhost = f"gt-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
    yield f"amqp://{name}:{password}@{RABBITMQ}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)
