"""The `sftp` transfer backend: a directory on a server reached over SSH, with paramiko's SFTP.

Only the SFTP protocol is used, never a remote shell: directories are made
with mkdir, files written under a temporary name and renamed into place with
the `posix-rename@openssh.com` extension (atomic, replaces an older copy), and
size and adler32 come from reading the file back after the write.

Connections: one SSH connection with one SFTP channel per transfer in
progress, up to the destination's `parallel`, kept between calls in a small
pool. A connection of its own per transfer, rather than many channels on one,
means a dead or stuck connection costs only the call that used it, each
transfer has its own flow control, and sshd's MaxSessions (channels per
connection) does not cap `parallel`.

Time: the destination's `timeout` bounds connecting, opening the SFTP channel
and each wait on the channel (a request's answer, room to send the next
block), so a dead or frozen server raises TransferError after at most that
long without progress, and never hangs. A connection that failed that way is
closed; the next call opens a new one.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko

from pilots.checksums import adler32_stream
from sites.errors import BackendError
from sites.ssh import connect, endpoint
from transfer.base import (
    DestinationSettings,
    Entry,
    FileInfo,
    checked_path,
    copy_source,
    describe,
    partial_name,
    write_complete,
)
from transfer.errors import SourceError, TransferError
from transfer.paths import require_under

log = logging.getLogger(__name__)

#: Exceptions that leave an SFTP session unusable (its requests and answers out of step).
BROKEN = (TimeoutError, EOFError, paramiko.SSHException, paramiko.SFTPError)


@dataclass
class _Connection:
    """One SSH connection and its SFTP channel, used by one transfer at a time."""

    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient
    #: The pool's generation when opened: a connection from before close() is not reused.
    generation: int

    def alive(self) -> bool:
        transport = self.client.get_transport()
        channel = self.sftp.get_channel()
        return transport is not None and transport.is_active() and not channel.closed

    def close(self) -> None:
        self.client.close()


class SftpTransfer:
    """Implements `Transfer` over SFTP; thread-safe, up to `parallel` transfers at once."""

    def __init__(self, settings: DestinationSettings) -> None:
        self.access = settings.ssh_access()
        self.root = PurePosixPath(settings.root)
        self.where = endpoint(self.access, "sftp")
        self._slots = threading.BoundedSemaphore(settings.parallel)
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._generation = 0
        #: Until the server says it lacks the extension.
        self._posix_rename = True
        #: The root as the server resolves it, once it exists.
        self._real_root: PurePosixPath | None = None

    def put(self, source: str, path: str) -> FileInfo:
        final = self._remote(path)
        partial = final.with_name(partial_name(final.name))
        try:
            reader = open(source, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise SourceError(f"cannot read {source}: {describe(exc)}") from exc
        with reader, self._connection(path, "put") as connection:
            sftp = connection.sftp
            self._make_directories(sftp, final.parent)
            self._confine(sftp, final.parent, path)
            # closed by hand, not by a `with`: after a timeout, closing would wait again
            writer = sftp.open(str(partial), "wb")
            try:
                writer.set_pipelined(True)
                copy_source(reader, writer, source)
                writer.close()
                self._rename(sftp, str(partial), str(final))
            except BaseException as exc:
                # nothing under the final name; the temporary goes too, if the server still
                # answers (after a timeout or a dropped connection it cannot be reached)
                if not _broken(connection, exc):
                    with suppress(OSError, *BROKEN):
                        writer.close()
                        sftp.remove(str(partial))
                raise
            return _read_back(sftp, str(final))

    def get(self, path: str, target: str) -> FileInfo:
        remote = str(self._remote(path))
        with self._connection(path, "get") as connection:
            self._confine(connection.sftp, remote, path)
            reader = connection.sftp.open(remote, "rb")
            reader.prefetch()
            size, adler32 = write_complete(Path(target),
                                           lambda writer: adler32_stream(reader, writer),
                                           f"copy {self.url(path)} -> {target}")
            reader.close()  # on failure, closed with the connection
        return FileInfo(size, adler32)

    def stat(self, path: str) -> FileInfo | None:
        remote = str(self._remote(path))
        with self._connection(path, "stat") as connection:
            try:
                self._confine(connection.sftp, remote, path)
                return _read_back(connection.sftp, remote)
            except FileNotFoundError:
                return None

    def remove(self, path: str) -> None:
        remote = str(self._remote(path))
        with self._connection(path, "remove") as connection, suppress(FileNotFoundError):
            self._confine(connection.sftp, remote, path)
            connection.sftp.remove(remote)

    def listing(self, directory: str) -> list[Entry]:
        remote = str(self._remote(directory))
        with self._connection(directory, "list") as connection:
            try:
                found = connection.sftp.listdir_attr(remote)
            except FileNotFoundError:
                return []
        return [Entry(attributes.filename, stat.S_ISDIR(mode), attributes.st_size or 0,
                      float(attributes.st_mtime or 0))
                for attributes in found
                if stat.S_ISREG(mode := attributes.st_mode or 0) or stat.S_ISDIR(mode)]

    def remove_directory(self, path: str) -> None:
        remote = str(self._remote(path))
        with self._connection(path, "remove") as connection:
            try:
                connection.sftp.rmdir(remote)
            except OSError as exc:
                # SFTP names no reason for a directory that is not empty; a timeout is
                # the connection's fault, not the directory's
                if isinstance(exc, TimeoutError):
                    raise

    def url(self, path: str) -> str:
        return f"{self.where}{self._remote(path)}"

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _remote(self, path: str) -> PurePosixPath:
        return self.root / checked_path(f"{self.where}{self.root}", path)

    def _confine(self, sftp: paramiko.SFTPClient, remote: PurePosixPath | str,
                 path: str) -> None:
        """Refuse `remote` if, resolved by the server (symbolic links followed), it leaves
        the root: at a site's storage the payload may have made the links (OutsideRoot,
        which no retry makes right). A missing file raises FileNotFoundError."""
        if self._real_root is None:
            self._real_root = PurePosixPath(sftp.normalize(str(self.root)))
        require_under(PurePosixPath(sftp.normalize(str(remote))), self._real_root,
                      f"{self.where}{self.root}", path)

    @contextmanager
    def _connection(self, path: str, action: str) -> Iterator[_Connection]:
        """A connection of its own for one operation; back to the pool if it succeeded.

        A connection that saw a failure is closed (with every file it had open),
        so no half-finished exchange is carried into the next call. Errors of the
        server or the connection become TransferError naming the destination, the
        path and the action.
        """
        with self._slots:
            connection = self._take()
            try:
                yield connection
            except BaseException as exc:
                connection.close()
                if isinstance(exc, (OSError, *BROKEN)):
                    reason = describe(exc)
                    if isinstance(exc, TimeoutError):
                        reason += f" (no answer within {self.access.timeout}s)"
                    raise TransferError(f"{self.url(path)}: {action}: {reason}") from exc
                raise
            with self._lock:
                if connection.generation == self._generation:
                    self._idle.append(connection)
                    return
            connection.close()

    def _take(self) -> _Connection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.alive():
                    return connection
                log.info("%s: connection dropped; opening another", self.where)
                connection.close()
            generation = self._generation
        return self._open(generation)

    def _open(self, generation: int) -> _Connection:
        timeout = self.access.timeout
        try:
            client = connect(self.access, self.where, field="known_hosts")
        except BackendError as exc:
            raise TransferError(str(exc), field=exc.field) from None
        # paramiko waits for the subsystem's start without a bound: close the connection
        # if the server does not answer in time
        watchdog = threading.Timer(timeout, client.close)
        watchdog.start()
        try:
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
        except (OSError, *BROKEN) as exc:
            client.close()
            raise TransferError(f"{self.where}: cannot start SFTP: {describe(exc)}") from exc
        finally:
            watchdog.cancel()
        return _Connection(client, sftp, generation)

    def _make_directories(self, sftp: paramiko.SFTPClient, directory: PurePosixPath) -> None:
        missing: list[PurePosixPath] = []
        while directory != directory.parent:
            try:
                sftp.stat(str(directory))
                break
            except FileNotFoundError:
                missing.append(directory)
                directory = directory.parent
        for step in reversed(missing):
            try:
                sftp.mkdir(str(step))
            except OSError:
                # another transfer may have made it meanwhile
                if not stat.S_ISDIR(sftp.stat(str(step)).st_mode or 0):
                    raise

    def _rename(self, sftp: paramiko.SFTPClient, partial: str, final: str) -> None:
        if self._posix_rename:
            try:
                sftp.posix_rename(partial, final)
                return
            except OSError as exc:
                if exc.errno is not None or "unsupported" not in str(exc).lower():
                    raise
                self._posix_rename = False
                log.warning("%s: the server lacks posix-rename; renaming after removing the "
                            "older copy, which leaves a moment without one", self.where)
        # the plain SFTP rename refuses to replace a file
        with suppress(FileNotFoundError):
            sftp.remove(final)
        sftp.rename(partial, final)


def _read_back(sftp: paramiko.SFTPClient, remote: str) -> FileInfo:
    """Size and adler32 of `remote`, read over SFTP (reads pipelined by paramiko's prefetch)."""
    reader = sftp.open(remote, "rb")
    reader.prefetch()
    size, adler32 = adler32_stream(reader)
    # closed here, not by a `with`: after a timeout, closing would wait on a stuck server
    # again; on failure the whole connection is closed instead
    reader.close()
    return FileInfo(size, adler32)


def _broken(connection: _Connection, exc: BaseException) -> bool:
    """Whether `exc` left the connection unusable (a server's refusal does not)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BROKEN):
            return True
        cause = cause.__cause__ or cause.__context__
    return not connection.alive()
