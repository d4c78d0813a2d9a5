"""A real single-node SLURM cluster and an OpenSSH server, both on loopback, for the tests.

Every daemon runs from a temporary directory with a config of its own (munged, slurmctld,
slurmd, sshd), so nothing in /etc is read or changed; `scripts/services.sh` installs them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import missing_service

#: Bounds on the waits below, in seconds.
STARTUP_TIMEOUT = 30
SHUTDOWN_TIMEOUT = 15


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    #: os.environ plus SLURM_CONF: pass it to sbatch, squeue, scontrol, scancel...
    env: dict[str, str]
    partition: str
    log_dir: Path

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster; raises if it fails."""
        return subprocess.run(command, env=self.env, check=True, capture_output=True,
                              text=True, timeout=timeout)


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    #: the client's private key (OpenSSH ed25519, mode 0600)
    key_file: Path
    #: `[host]:port ssh-ed25519 ...`: the server's real host key
    known_hosts: Path
    #: the same `[host]:port` with another ed25519 key, as after a host key change
    wrong_known_hosts: Path
    #: an existing empty file: the host is unknown
    empty_known_hosts: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"--- {path}: missing"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join([f"--- {path}", *text])


def start(command: list[str], log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A daemon in the foreground, its output in `log`; a session of its own, so that
    Ctrl-C in pytest reaches the tests and not the daemon."""
    with log.open("ab") as output:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(SHUTDOWN_TIMEOUT)


def wait_for(ready: Callable[[], bool], processes: list[subprocess.Popen[bytes]],
             what: str, logs: list[Path]) -> None:
    """Poll `ready` until it holds; fail with the logs' tails if a daemon exits or time is up."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not ready():
        exited = [p.args for p in processes if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            for process in processes:
                stop(process)
            reason = f"exited: {exited}" if exited else f"not up within {STARTUP_TIMEOUT}s"
            missing_service(f"{what} ({reason})\n" + "\n".join(tail(log) for log in logs))
        time.sleep(0.2)


def query(env: dict[str, str], *command: str) -> str:
    """A client command's output; "" while the controller does not answer."""
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def slurm_conf(directory: Path, munge_socket: Path) -> str:
    """One node `localhost` in one partition `debug`; everything under `directory`."""
    return f"""\
ClusterName=gridtower-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
# bind the daemons to 127.0.0.1, not to every address
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
# slurmctld -D logs to its stderr, caught in log/slurmctld.log; slurmd's file also
# gets the lines of slurmstepd, which runs each job
SlurmdLogFile={directory}/log/slurmd.log
MailProg=/bin/true
PlugStackConfig={directory}/plugstack.conf
# no cgroups, no accounting: nothing beyond the temporary directory is needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# one CPU per job unless asked, so that several jobs share the node
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# jobs start within a second of their submission
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# ended jobs stay known to `scontrol show job` for ten minutes
MinJobAge=600
KillWait=5
InactiveLimit=0
ReturnToService=2
# the node claims more than the machine has, so that several pilots fit
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd as root, from a temporary directory; the node idle."""
    if not all(shutil.which(c) for c in COMMANDS):
        missing_service(f"SLURM and munge ({', '.join(COMMANDS)}; run scripts/services.sh)")
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")


@contextmanager
def running_cluster(directory: Path) -> Iterator[SlurmCluster]:
    """A cluster whose files live in `directory`, up until the block ends (bench/ uses it)."""
    log_dir = directory / "log"
    for sub in ("state", "spool", "log"):
        (directory / sub).mkdir()
    (directory / "plugstack.conf").write_text("")
    conf = directory / "slurm.conf"
    munge_socket = directory / "munge.socket"
    conf.write_text(slurm_conf(directory, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(conf=conf, env=env, partition="debug", log_dir=log_dir)

    # munged of our own, on its own socket and key: a system munged is neither needed nor used
    key = directory / "munge.key"
    key.write_bytes(secrets.token_bytes(128))
    key.chmod(0o600)
    munge_log = log_dir / "munged.log"
    # --force: munged refuses a socket in a directory others cannot enter, as pytest's
    # temporary directories are (mode 0700); here every client is root anyway
    munged = start(["munged", "--foreground", "--force", f"--socket={munge_socket}",
                    f"--key-file={key}", f"--pid-file={directory}/munged.pid",
                    f"--seed-file={directory}/munged.seed"], munge_log)
    wait_for(munge_socket.exists, [munged], "munged", [munge_log])

    slurmctld = start(["slurmctld", "-D", "-f", str(conf)], log_dir / "slurmctld.log", env)
    # its stderr holds what its log file does, and what it says before opening it
    slurmd = start(["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
                   log_dir / "slurmd.out", env)
    daemons = [munged, slurmctld, slurmd]
    logs = [munge_log, log_dir / "slurmctld.log", log_dir / "slurmd.out"]
    try:
        wait_for(lambda: query(env, "sinfo", "-h", "-N", "-o", "%t") == "idle", daemons,
                 "the SLURM cluster", logs)
        yield cluster
    finally:
        # jobs left running would outlive slurmd: their slurmstepd is a daemon of its own
        subprocess.run(["scancel", f"--partition={cluster.partition}"], env=env, timeout=30,
                       capture_output=True)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while time.monotonic() < deadline and query(env, "squeue", "-h"):
            time.sleep(0.5)
        for daemon in (slurmd, slurmctld, munged):
            stop(daemon)


def ssh_keygen(path: Path) -> str:
    """A new ed25519 key pair at `path`; returns the public key as `type base64`."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, timeout=30)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def require_sshd() -> None:
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None:
        missing_service("OpenSSH server (/usr/sbin/sshd; run scripts/services.sh)")


class SshDaemon:
    """sshd on 127.0.0.1 serving from `directory`, root logging in by key only, with SFTP.

    stop() ends the listener and every session it serves, as a crash of the
    server would; start() brings it back on the same port with the same host
    key. pause() freezes them all (SIGSTOP), as a hung server, until resume()
    or stop().
    """

    def __init__(self, directory: Path, settings: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        host, port = "127.0.0.1", free_port()
        host_key = ssh_keygen(directory / "host_key")
        client_key = ssh_keygen(directory / "client_key")
        other_key = ssh_keygen(directory / "other_key")
        authorized = directory / "authorized_keys"
        authorized.write_text(client_key + "\n")
        self.config = directory / "sshd_config"
        # UsePAM no: sshd checks the key itself, without the system's PAM stack; then root's
        # password field must be "*" (as in Debian images), not locked with "!"
        self.config.write_text(f"""\
ListenAddress {host}
Port {port}
HostKey {directory}/host_key
PidFile {directory}/sshd.pid
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
{settings}""")
        endpoint = f"[{host}]:{port}"
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"{endpoint} {host_key}\n")
        wrong_known_hosts = directory / "wrong_known_hosts"
        wrong_known_hosts.write_text(f"{endpoint} {other_key}\n")
        empty_known_hosts = directory / "empty_known_hosts"
        empty_known_hosts.touch()
        self.server = SshServer(host=host, port=port, user="root",
                                key_file=directory / "client_key", known_hosts=known_hosts,
                                wrong_known_hosts=wrong_known_hosts,
                                empty_known_hosts=empty_known_hosts)
        self.log = directory / "sshd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Listen (again), and return once the server answers with its banner."""
        assert self._process is None, "sshd runs already"
        # sshd's privilege separation directory; a system without sshd running may lack it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        # an absolute path: sshd re-executes itself for every connection
        self._process = start(["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E",
                               str(self.log)], self.log)
        host, port = self.server.host, self.server.port

        def banner() -> bool:
            try:
                with socket.create_connection((host, port), timeout=2) as connection:
                    return connection.recv(64).startswith(b"SSH-2.0-")
            except OSError:
                return False

        wait_for(banner, [self._process], f"sshd on {host}:{port}", [self.log])

    def stop(self) -> None:
        """Kill every session (they outlive the listener otherwise), then the listener."""
        if self._process is None:
            return
        process, self._process = self._process, None
        for pid in descendants(process.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.terminate()
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused listener acts on SIGTERM only now
        stop(process)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        assert self._process is not None, "sshd does not run"
        for pid in [self._process.pid, *descendants(self._process.pid)]:
            with suppress(ProcessLookupError):
                os.kill(pid, number)


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # after "(comm)": state, then the parent's pid
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


@contextmanager
def running_sshd(directory: Path, settings: str = "") -> Iterator[SshDaemon]:
    """An SshDaemon up until the block ends; `settings` are more sshd_config lines."""
    require_sshd()
    daemon = SshDaemon(directory, settings)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory,
         slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    """sshd on 127.0.0.1, root logging in by key only, SLURM_CONF set for every command."""
    with running_sshd(tmp_path_factory.mktemp("sshd"),
                      f"SetEnv SLURM_CONF={slurm_cluster.conf}\n") as daemon:
        yield daemon.server


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SshDaemon]:
    """An sshd of the test's own, to stop, pause and start at will."""
    with running_sshd(tmp_path / "sshd") as daemon:
        yield daemon
