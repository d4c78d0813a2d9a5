"""Running batch commands at a site: on the tower's machine, or on a login node over SSH.

Every batch system talks to its site through a `Runner`, so a site reached
through SSH (a NERSC login node) differs from a local one by configuration
alone. Commands are argv lists; over SSH they are quoted for the remote shell
with shlex, so no site value can become shell syntax.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sites.config import SiteConfig, SshAccess
from sites.errors import BackendError
from sites.ssh import connect, endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end (whatever its exit code)."""

    code: int
    stdout: str
    stderr: str


class Runner(Protocol):
    #: Where commands run, for messages: "local" or "ssh://user@host:port".
    where: str

    def run(self, argv: Sequence[str], input: str | None = None,
            timeout: float | None = None) -> Completed:
        """Run `argv` at the site, feeding `input` to its stdin.

        A non-zero exit is returned, not raised; raises BackendError when the
        command cannot be started, the site cannot be reached, or it times out.
        """

    def close(self) -> None:
        """Release connections."""


class LocalRunner:
    """Implements `Runner` with subprocesses on the tower's machine."""

    where = "local"

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def run(self, argv: Sequence[str], input: str | None = None,
            timeout: float | None = None) -> Completed:
        try:
            done = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                                  timeout=timeout or self.timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise BackendError(f"local: {argv[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"local: {argv[0]} did not finish within "
                               f"{timeout or self.timeout:.0f}s") from None
        except OSError as exc:
            raise BackendError(f"local: {argv[0]}: {exc.strerror}") from None
        return Completed(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        pass


class SshRunner:
    """Implements `Runner` over one reused SSH connection (paramiko), key authentication only.

    The host key must already be in the configured known_hosts file: an unknown
    or changed key is refused, never added. A dropped connection is opened
    again on the next command.
    """

    def __init__(self, access: SshAccess) -> None:
        self.access = access
        self.where = endpoint(access)
        self._client: Any = None
        self._lock = threading.Lock()

    def run(self, argv: Sequence[str], input: str | None = None,
            timeout: float | None = None) -> Completed:
        import paramiko

        limit = timeout or self.access.timeout
        command = shlex.join(argv)
        with self._lock:
            for retry in (False, True):
                client = self._connect()
                try:
                    stdin, stdout, stderr = client.exec_command(command, timeout=limit)
                    if input is not None:
                        stdin.write(input)
                    stdin.channel.shutdown_write()
                    out = stdout.read().decode(errors="replace")
                    err = stderr.read().decode(errors="replace")
                    return Completed(stdout.channel.recv_exit_status(), out, err)
                except TimeoutError:
                    self._disconnect()
                    raise BackendError(f"{self.where}: {argv[0]} did not finish within "
                                       f"{limit:.0f}s") from None
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    self._disconnect()
                    if retry:
                        raise BackendError(f"{self.where}: {argv[0]}: {exc}") from None
                    log.info("%s: connection dropped (%s); reconnecting", self.where, exc)
            raise AssertionError("unreachable")

    def _connect(self) -> Any:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is not None and transport.is_active():
            return self._client
        self._disconnect()
        self._client = connect(self.access, self.where)
        return self._client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            self._disconnect()


def open_runner(site: SiteConfig) -> Runner:
    """The runner for `site`: SSH when the site has an `ssh` section, else local."""
    return SshRunner(site.ssh) if site.ssh is not None else LocalRunner()
