"""A real ARC Computing Element (Debian's nordugrid-arc-arex) on loopback, for the tests.

A-REX and its web service (the REST interface) run from a temporary directory with an
arc.conf of their own: the fork batch system, control and session directories, logs,
pid files, a CA made here (with `tower.auth.ca`) that signs the CE's host certificate
(localhost) and the tower's robot certificate, which alone is mapped (to `nobody`).
A second CA's certificate plays the stranger the CE refuses. Nothing in /etc is read
or changed; `scripts/services.sh` installs the packages.

ARC's start scripts make arched listen on every interface; a shim `arched` in a
private ARC_LOCATION adds the loopback interface to the configuration they write.
The pilots run as `nobody` (ARC maps the robot there), with Debian's python3.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.cluster import free_port, tail
from tests.conftest import missing_service
from tower.auth import ca

SHARE = Path("/usr/share/arc")
#: The pilot's interpreter as `nobody` sees it: the system's, with requests, pika, yaml.
PYTHON = "/usr/bin/python3"
#: The user ARC maps the robot to: its jobs run as this uid.
NOBODY = 65534
#: Bounds on the waits below, in seconds (A-REX takes some ten seconds to stop).
STARTUP_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 30
#: The group every prime DH exchange uses (RFC 7919): A-REX otherwise makes 4096-bit
#: parameters of its own at start, minutes of CPU here.
DH_GROUP = "ffdhe2048"
#: Adds the loopback interface to the web service's listener, then runs the real arched.
ARCHED_SHIM = r"""#!/bin/sh
for arg in "$@"; do
    case "$previous" in
        -c) sed -i 's#<tcp:Listen>#&<tcp:Interface>127.0.0.1</tcp:Interface>#' "$arg";;
    esac
    previous=$arg
done
exec /usr/sbin/arched "$@"
"""


@dataclass
class ArcCE:
    directory: Path
    port: int
    #: The A-REX endpoint the tower's site names (REST is below it).
    url: str
    #: The CA that signs the CE's host certificate and the robot's.
    ca_file: Path
    certificate: Path
    key: Path
    #: A certificate of another CA: the CE does not accept it.
    stranger_certificate: Path
    stranger_key: Path

    @property
    def code(self) -> Path:
        """The pilot package and the example simulation, readable by the pilots."""
        return self.directory / "code"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ARC_CONFIG": str(self.directory / "arc.conf")}

    def start(self) -> None:
        """Start A-REX and its web service; wait until the REST interface answers."""
        for script, location in (("arc-arex-start", "/usr"),
                                 ("arc-arex-ws-start", str(self.directory / "location"))):
            done = subprocess.run([str(SHARE / script)], env={**self.env,
                                  "ARC_LOCATION": location}, capture_output=True, text=True,
                                  timeout=STARTUP_TIMEOUT)
            if done.returncode != 0:
                missing_service(f"ARC CE ({script} exited {done.returncode}: "
                                f"{(done.stdout + done.stderr)[-800:]})\n{self.logs()}")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.answers():
            if time.monotonic() > deadline:
                missing_service(f"ARC CE (REST not up within {STARTUP_TIMEOUT}s)\n"
                                f"{self.logs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the web service and A-REX; the jobs they started (fork) run on."""
        pids = []
        for name in ("ws.pid", "arex.pid"):
            path = self.directory / "run" / name
            with suppress(OSError, ValueError):
                pid = int(path.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.3)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def end_jobs(self) -> None:
        """End what the CE's jobs left running: ARC's fork back end cancels a job by
        killing its wrapper alone, and pilots of a tower that is gone wait on for it.
        They are found as the jobs' user's processes working in this CE's directory
        (pilots in their sessions, payloads in the sites' scratch)."""
        inside = f"{self.directory}/"
        pids = []
        for entry in Path("/proc").iterdir():
            with suppress(OSError):
                if (entry.name.isdigit() and entry.stat().st_uid == NOBODY
                        and os.readlink(entry / "cwd").startswith(inside)):
                    pids.append(int(entry.name))
        for number in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, number)
            deadline = time.monotonic() + 5
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.2)

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/rest/1.0/info", verify=str(self.ca_file),
                                cert=(str(self.certificate), str(self.key)),
                                timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def logs(self) -> str:
        return "\n".join(tail(self.directory / "log" / name, 20)
                         for name in ("arex.log", "ws.log"))

    def shared(self, name: str) -> Path:
        """A directory the pilots (nobody) may write: a site's scratch or storage."""
        path = self.directory / "sites" / name
        path.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.chmod(0o1777)
        return path

    def site_options(self, **more: object) -> dict[str, object]:
        """`batch_options` of a site that is this CE."""
        return {"url": self.url, "ca_file": str(self.ca_file),
                "certificate": str(self.certificate), "key": str(self.key),
                "queue": "fork", "lrms": "fork", **more}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def arc_conf(directory: Path, port: int, host: tuple[Path, Path], robot_dn: str) -> str:
    return f"""\
[common]
hostname = localhost
x509_host_cert = {host[0]}
x509_host_key = {host[1]}
x509_cert_dir = {directory / "certificates"}

[authgroup:tower]
subject = {robot_dn}

[mapping]
map_to_user = tower nobody:nogroup

[lrms]
lrms = fork

[arex]
controldir = {directory / "control"}
sessiondir = {directory / "session"}
pidfile = {directory / "run" / "arex.pid"}
logfile = {directory / "log" / "arex.log"}
loglevel = INFO

[arex/ws]
wsurl = https://localhost:{port}/arex
pidfile = {directory / "run" / "ws.pid"}
logfile = {directory / "log" / "ws.log"}

[arex/ws/jobs]
allowaccess = tower

[infosys]
logfile = {directory / "log" / "infoprovider.log"}

[infosys/glue2]

[infosys/cluster]

[queue:fork]
"""


def _dn(cert: Path) -> str:
    """The certificate's subject as ARC writes it: /O=.../CN=..."""
    from cryptography import x509

    name = x509.load_pem_x509_certificate(cert.read_bytes()).subject
    return "".join(f"/{attribute.rfc4514_attribute_name}={attribute.value}"
                   for attribute in name)


def _hash(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
                          check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def running_ce(directory: Path) -> Iterator[ArcCE]:
    if not (SHARE / "arc-arex-ws-start").exists() or not Path("/usr/sbin/arched").exists():
        missing_service("ARC CE (nordugrid-arc-arex; run scripts/services.sh)")
    if subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", ": > /dev/null"],
                      capture_output=True).returncode != 0:
        missing_service("ARC CE (/dev/null is not writable by other users: its job scripts "
                        "fail; chmod 666 /dev/null)")
    authority = ca.init_ca(directory / "ca", name="ARC test CA")
    host = ca.issue(authority.directory, "host", "localhost", hosts=["localhost", "127.0.0.1"],
                    out=directory / "host")
    robot = ca.issue(authority.directory, "robot", "tower robot", out=directory / "robot")
    stranger_ca = ca.init_ca(directory / "stranger-ca", name="another CA")
    stranger = ca.issue(stranger_ca.directory, "robot", "tower robot", out=directory / "stranger")
    certificates = directory / "certificates"
    certificates.mkdir()
    (certificates / f"{_hash(authority.cert)}.0").write_bytes(authority.cert.read_bytes())
    for name in ("control", "session", "run", "log", "location/sbin"):
        (directory / name).mkdir(parents=True)
    for name in ("lib", "share", "libexec"):
        (directory / "location" / name).symlink_to(f"/usr/{name}")
    shim = directory / "location" / "sbin" / "arched"
    shim.write_text(ARCHED_SHIM)
    shim.chmod(0o755)
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                    f"group:{DH_GROUP}", "-out", str(directory / "control" / "dhparam.pem")],
                   check=True, capture_output=True)
    port = free_port()
    (directory / "arc.conf").write_text(arc_conf(directory, port, host, _dn(robot[0])))
    # the pilots run as nobody: they must reach the session and the temporary directory
    directory.chmod(0o755)
    ce = ArcCE(directory, port, f"https://localhost:{port}/arex", authority.cert, *robot,
               *stranger)
    ce.start()
    try:
        yield ce
    finally:
        ce.stop()
        ce.end_jobs()


@pytest.fixture
def arc_ce(arc_ce_session: ArcCE) -> Iterator[ArcCE]:
    """The session's CE, running; what its jobs leave running ends with the test."""
    if not arc_ce_session.answers():
        arc_ce_session.start()
    yield arc_ce_session
    arc_ce_session.end_jobs()


@pytest.fixture(scope="session")
def arc_ce_session() -> Iterator[ArcCE]:
    """One CE for the session (A-REX takes seconds to start and to stop), in a directory
    of /tmp the pilots (nobody) may enter, unlike pytest's own."""
    directory = Path(tempfile.mkdtemp(prefix="gridtower-arcce-"))
    try:
        _copy_code(directory / "code")
        with running_ce(directory) as ce:
            yield ce
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _copy_code(code: Path) -> None:
    """The pilot package and the example simulation where the pilots (nobody) can read
    them: the checkout itself may lie below a directory only root may enter (a clone in
    a `mktemp -d` directory, as CI's may be)."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "pilots", code / "pilots",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (code / "examples").mkdir()
    shutil.copy2(root / "examples" / "toysim.py", code / "examples" / "toysim.py")
    for path in (code, *code.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
