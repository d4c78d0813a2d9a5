"""Several processes, one tower: the production layout of README's *Several processes*.

Real nginx (the Debian package) with the shipped contrib/nginx/gridtower.conf checks
client certificates in front of two `tower serve` processes; two `tower run --no-api`
processes run the loops; all on one PostgreSQL and one RabbitMQ. Pilots (local) reach
the tower through nginx with the credentials the factory mints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine, select

from tests.cluster import free_port
from tests.conftest import missing_service, write_home
from tests.faults import ledger
from tests.integration.conftest import assert_done_exactly_once
from tests.integration.test_failures import flaky_production
from tower.auth import ca
from tower.model.models import Job, Presence

pytestmark = pytest.mark.one_database

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
TOWER = [sys.executable, "-m", "tower.cli"]
#: The address nginx connects to the API processes from (proxy_bind), the one trusted.
PROXY = "127.0.0.2"
MANAGER = "CN=manager,OU=users,O=gridtower"
ADMIN = "CN=admin,OU=users,O=gridtower"
#: A grid certificate's subject, as the tower writes it (emailAddress has no RFC 4514 name).
GRID_USER = "1.2.840.113549.1.9.1=jose@example.org,CN=José Muñoz,O=Grid,DC=example,DC=org"

Cert = tuple[str, str]


def grid_user_cert(authority: Path, out: Path) -> Cert:
    """A user certificate of another CA (a grid CA), whose subject nginx prints with
    OpenSSL's names and escaped UTF-8 (`emailAddress=...,CN=Jos\\C3\\A9 Mu\\C3\\B1oz,...`)."""
    ca_key = serialization.load_pem_private_key((authority / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((authority / "ca.crt").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grid"),
        x509.NameAttribute(NameOID.COMMON_NAME, "José Muñoz"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jose@example.org")])
    assert subject.rfc4514_string() == GRID_USER
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out / "grid-user.crt", out / "grid-user.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def nginx_config(home: Path, nginx_port: int, api_ports: list[int], authority: Path,
                 grid: Path) -> Path:
    """The shipped nginx configuration, with this test's ports and files in place of the
    production ones, inside a main configuration for a foreground nginx on loopback."""
    (home / "nginx").mkdir()
    (home / "nginx" / "client-cas.pem").write_text(
        (authority / "ca.crt").read_text() + (grid / "ca.crt").read_text())
    (home / "nginx" / "client-crls.pem").write_text(
        (authority / "crl.pem").read_text() + (grid / "crl.pem").read_text())
    shipped = (CONTRIB / "nginx" / "gridtower.conf").read_text()
    replacements = {
        "server 127.0.0.1:8471 ": f"server 127.0.0.1:{api_ports[0]} ",
        "server 127.0.0.1:8472 ": f"server 127.0.0.1:{api_ports[1]} ",
        "listen 8443 ssl;": f"listen 127.0.0.1:{nginx_port} ssl;",
        "/etc/gridtower/nginx/host.crt": str(authority / "issued" / "server.crt"),
        "/etc/gridtower/nginx/host.key": str(authority / "issued" / "server.key"),
        "/etc/gridtower/nginx/": f"{home / 'nginx'}/",
        "/etc/gridtower/ca/ca.crt": str(authority / "ca.crt"),
    }
    for old, new in replacements.items():
        assert old in shipped, f"contrib/nginx/gridtower.conf no longer says {old!r}"
        shipped = shipped.replace(old, new)
    (home / "nginx" / "gridtower.conf").write_text(shipped)
    prefix = home / "nginx"
    main = f"""
        daemon off;
        master_process on;
        worker_processes 1;
        {"user root;" if os.geteuid() == 0 else ""}
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log info;
        events {{ worker_connections 256; }}
        http {{
            access_log {prefix}/access.log;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            include {prefix}/gridtower.conf;
        }}
    """
    (prefix / "nginx.conf").write_text(main)
    return prefix / "nginx.conf"


@dataclass
class Fleet:
    home: Path
    env: dict[str, str]
    url: str
    api_urls: list[str]
    ca_cert: str
    certs: dict[str, Cert]
    engine: Engine
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *argv: str) -> None:
        with open(self.home / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [*TOWER, *argv], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def call(self, method: str, path: str, who: str | None = None, url: str | None = None,
             **kwargs: Any) -> requests.Response:
        return requests.request(method, (url or self.url) + path, verify=self.ca_cert,
                                cert=self.certs.get(who or ""), timeout=20, **kwargs)

    def wait_for(self, what: Callable[[], bool], timeout: float, doing: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            for name, process in self.processes.items():
                assert process.poll() is None or name in self.killed, (
                    f"{name} exited with {process.returncode}: "
                    f"{(self.home / f'{name}.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                logs = "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-1500:]}"
                               for log in sorted(self.home.glob("*.log")) +
                               [self.home / "nginx" / "error.log"] if log.exists())
                try:
                    states: Any = self.states()
                except Exception as exc:  # no tables yet: the first API process never came up
                    states = exc
                pytest.fail(f"not {doing} within {timeout}s: {states}{logs}")
            time.sleep(0.2)

    @property
    def killed(self) -> set[str]:
        return {name for name, process in self.processes.items()
                if process.returncode == -signal.SIGKILL}

    def states(self) -> dict[str, int]:
        with Session(self.engine) as session:
            states: dict[str, int] = {}
            for job in session.exec(select(Job)).all():
                states[job.state] = states.get(job.state, 0) + 1
        return states

    def serving(self, url: str) -> bool:
        try:
            return self.call("GET", "/api/v1/productions", "manager", url=url).ok
        except requests.RequestException:
            return False


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str, amqp_url: str) -> Iterator[Fleet]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        missing_service("nginx (the Debian package; scripts/services.sh installs it)")
    assert nginx is not None
    home = tmp_path / "home"
    authority = ca.init_ca(home / "ca", "tower CA").directory
    ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1", "localhost"])
    certs: dict[str, Cert] = {}
    kinds: dict[str, ca.Kind] = {"manager": "user", "admin": "user", "reader": "robot"}
    for name, kind in kinds.items():
        cert, key = ca.issue(authority, kind, name, days=1)
        certs[name] = (str(cert), str(key))
    grid = ca.init_ca(tmp_path / "grid-ca", "a grid CA").directory
    certs["grid_user"] = grid_user_cert(grid, tmp_path)
    foreign = ca.init_ca(tmp_path / "foreign-ca", "a CA nginx does not know").directory
    cert, key = ca.issue(foreign, "user", "admin", days=1)  # its subject: the admin's
    certs["foreign"] = (str(cert), str(key))
    nginx_port, api_ports = free_port(), [free_port(), free_port()]
    config = write_home(
        home, postgres_url, broker=amqp_url,
        api={"bind": "127.0.0.1", "port": api_ports[0],
             "url": f"https://127.0.0.1:{nginx_port}", "trusted_proxies": [PROXY],
             "tls": {"cert": "ca/issued/server.crt", "key": "ca/issued/server.key",
                     "ca_bundle": "ca/ca.crt", "crl": "ca/crl.pem", "pilot_ca": "ca"}},
        access={"roles": [{"dn": MANAGER, "role": "manager"}, {"dn": ADMIN, "role": "admin"},
                          {"dn": GRID_USER, "role": "reader"},
                          {"pattern": "CN=*,OU=robots,O=gridtower", "role": "reader"}]},
        site={"pilot": {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5,
                        "idle_timeout": 3},
              "limits": {"max_queued": 2, "max_running": 2, "max_per_cycle": 2}},
        loops={"interval": 0.5, "republish_after": 2},
        storage={"destinations": {"store": "local:store"}, "default": ["store"],
                 "retry_delay": 1, "lease": 3})
    env = {**os.environ, "TOWER_CONFIG": str(config)}
    env.pop("TOWER_CLIENT_CONFIG", None)
    conf = nginx_config(home, nginx_port, api_ports, authority, grid)
    fleet = Fleet(home, env, f"https://127.0.0.1:{nginx_port}",
                  [f"https://127.0.0.1:{port}" for port in api_ports],
                  str(authority / "ca.crt"), certs, create_engine(postgres_url,
                                                                  poolclass=NullPool))
    try:
        fleet.start("api-1", "serve")  # creates the tables: the others find them made
        fleet.wait_for(lambda: fleet.serving(fleet.api_urls[0]), 60, "serving")
        fleet.start("api-2", "serve", "--port", str(api_ports[1]))
        with open(home / "nginx.log", "ab") as log:
            fleet.processes["nginx"] = subprocess.Popen(
                [nginx, "-e", str(home / "nginx" / "error.log"), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        fleet.wait_for(lambda: fleet.serving(fleet.api_urls[1]) and fleet.serving(fleet.url),
                       60, "serving through nginx")
        yield fleet
    finally:
        for process in fleet.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in fleet.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop_pilots(config)
        fleet.engine.dispose()


def stop_pilots(config: Path) -> None:
    """End the pilots the loop processes left (local processes of their own session)."""
    from tower.config import load_config
    from tower.loops import daemon
    from tower.runtime import Runtime

    runtime = Runtime.open(load_config(config))
    try:
        daemon.stop_pilots(runtime)
    finally:
        runtime.close()


def submit(fleet: Fleet, jobs: int, sleep: float) -> None:
    """Submit through nginx as the manager, with the CLI of a remote user."""
    spec = flaky_production(fleet.home.parent, jobs=jobs, sleep=sleep)
    client = fleet.home.parent / "client.yaml"
    cert, key = fleet.certs["manager"]
    client.write_text(yaml.safe_dump({"url": fleet.url, "cert": cert, "key": key,
                                      "ca": fleet.ca_cert}))
    done = subprocess.run([*TOWER, "--config", str(fleet.home.parent / "nowhere.yaml"),
                           "--client-config", str(client), "submit", str(spec), "--json"],
                          env={**os.environ, "TOWER_CONFIG": "/nonexistent"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["productions"][0]["jobs"] == jobs


def longest_pause_after(fleet: Fleet, moment: datetime) -> float:
    """The longest time, after `moment`, in which no job moved: what a kill stalled (for
    the report, not asserted: speed belongs to bench/)."""
    from tower.model.models import JobEvent

    with Session(fleet.engine) as session:
        times = sorted(event.at.replace(tzinfo=event.at.tzinfo or UTC)
                       for event in session.exec(select(JobEvent)).all())
    after = [moment] + [at for at in times if at > moment]
    return max(((b - a).total_seconds() for a, b in zip(after, after[1:], strict=False)),
               default=0.0)


def leased_by(fleet: Fleet, instance: str) -> tuple[bool, int]:
    """Whether `instance` holds an output it is staging; and how many jobs are done."""
    with fleet.engine.connect() as connection:
        holding, done = connection.execute(text(
            "select exists(select 1 from output where not staged and lease_until is not null "
            "and lease_owner = :owner), (select count(*) from job where state = 'done')"),
            {"owner": instance}).one()
    return bool(holding), int(done)


def check_ledger(fleet: Fleet) -> None:
    places = ledger.Places(destinations={"store": fleet.home / "store"},
                           storages=[fleet.home / "site-storage"], marker="none",
                           pilot_logs=fleet.home / "scratch" / "pilot-logs")
    assert ledger.check(fleet.engine, places) == []


def test_roles_work_through_nginx_and_no_client_names_itself(fleet: Fleet) -> None:
    productions = "/api/v1/productions"
    admin_header = {"X-Client-DN": ADMIN}
    # through nginx: each certificate as its grant says; none is anonymous (401)
    assert fleet.call("GET", productions, "reader").status_code == 200
    refused = fleet.call("POST", productions, "reader", json={})
    assert refused.status_code == 403
    assert "CN=reader,OU=robots,O=gridtower may not" in refused.json()["message"]
    assert fleet.call("GET", productions).status_code == 401
    # a grid CA's certificate, its subject as nginx prints it (OpenSSL's emailAddress,
    # escaped UTF-8): the grant written as the tower writes DNs holds
    assert fleet.call("GET", productions, "grid_user").status_code == 200
    assert fleet.call("POST", productions, "grid_user", json={}).status_code == 403
    # a certificate of a CA outside the bundle, whatever its subject, is refused by nginx
    assert fleet.call("GET", productions, "foreign").status_code == 400
    # a client naming itself to nginx: nginx replaces the header with what it verified
    assert fleet.call("GET", productions, headers=admin_header).status_code == 401
    assert fleet.call("POST", productions, "reader", json={},
                      headers=admin_header).status_code == 403
    assert fleet.call("GET", productions,
                      headers={"X_Client_DN": ADMIN}).status_code == 401
    # ... or straight to an API process's port: the header counts from the proxy alone
    for url in fleet.api_urls:
        assert fleet.call("GET", productions, url=url, headers=admin_header).status_code == 401
        assert fleet.call("POST", productions, "reader", url=url, json={},
                          headers=admin_header).status_code == 403
        # a certificate shown to an API process itself still names its holder
        assert fleet.call("GET", productions, "reader", url=url).status_code == 200


def test_an_api_process_killed_mid_run_and_the_production_completes(
        fleet: Fleet, record_property: Callable[[str, object], None]) -> None:
    jobs = 8
    fleet.start("loops-1", "run", "--no-api")
    submit(fleet, jobs, sleep=1.0)
    fleet.wait_for(lambda: fleet.states().get("running", 0) > 0, 60, "running")
    killed = datetime.now(UTC)
    fleet.kill("api-1")
    assert fleet.serving(fleet.url)  # nginx sends the next request to the other
    fleet.wait_for(lambda: fleet.states() == {"done": jobs}, 120, "done")
    record_property("longest_pause_after_kill_s", longest_pause_after(fleet, killed))
    assert_done_exactly_once(fleet.engine, jobs)
    check_ledger(fleet)


def test_a_loop_process_killed_mid_run_and_the_other_carries_on(
        fleet: Fleet, record_property: Callable[[str, object], None]) -> None:
    jobs = 10
    fleet.start("loops-1", "run", "--no-api")
    fleet.start("loops-2", "run", "--no-api")
    submit(fleet, jobs, sleep=1.0)
    fleet.wait_for(lambda: fleet.states().get("done", 0) >= 2, 60, "two jobs done")
    # the hardest moment: while it holds an output it is copying (the other takes it once
    # storage.lease runs out); else, if none is caught before, with 3 jobs still to end
    instance = re.findall(r"running as instance (\w+)", (fleet.home / "loops-1.log").read_text())
    while True:
        holding, done = leased_by(fleet, instance[-1])
        if holding or done >= jobs - 3:
            break
        time.sleep(0.005)
    killed = datetime.now(UTC)
    fleet.kill("loops-1")
    record_property("killed_holding_a_lease", holding)
    fleet.wait_for(lambda: fleet.states() == {"done": jobs}, 120, "done")
    record_property("longest_pause_after_kill_s", longest_pause_after(fleet, killed))
    assert_done_exactly_once(fleet.engine, jobs)
    check_ledger(fleet)


def test_gunicorn_serves_the_api_behind_nginx(fleet: Fleet) -> None:
    """contrib/gunicorn.conf.py and web/wsgi.py in place of the `tower serve` processes:
    gunicorn listens where tower.yaml says (api-1's port), with its certificate."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        missing_service("gunicorn (pip install gunicorn: the test extra)")
    fleet.kill("api-1")
    fleet.kill("api-2")
    with open(fleet.home / "gunicorn.log", "ab") as log:
        fleet.processes["gunicorn"] = subprocess.Popen(
            [str(gunicorn), "-c", str(CONTRIB / "gunicorn.conf.py"), "web.wsgi"],
            env={**fleet.env, "GRIDTOWER_WORKERS": "1"}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, cwd=fleet.home)
    fleet.wait_for(lambda: fleet.serving(fleet.url), 30, "serving through gunicorn")
    productions = "/api/v1/productions"
    assert fleet.call("GET", productions, "reader").status_code == 200
    assert fleet.call("POST", productions, "reader", json={}).status_code == 403
    assert fleet.call("GET", productions, headers={"X-Client-DN": ADMIN}).status_code == 401
    # straight to gunicorn's port: the header is not the proxy's, and a WSGI server hands
    # no certificate on: anonymous
    assert fleet.call("GET", productions, "reader", url=fleet.api_urls[0],
                      headers={"X-Client-DN": ADMIN}).status_code == 401
    # it tells the monitor that an API serves, as `tower serve` does
    with Session(fleet.engine) as session:
        before = session.get(Presence, "api")
        assert before is not None
    time.sleep(2.5)
    with Session(fleet.engine) as session:
        after = session.get(Presence, "api")
        assert after is not None and after.seen > before.seen
