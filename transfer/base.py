"""The `Transfer` seam: files to and from a destination, always complete under their final name;
the settings of a destination (`DestinationSettings`, read from tower.yaml), and the registry.

A backend is one module and one line in `TRANSFERS`. Every path it is given
is relative to the destination's root and checked here, in one place, before
anything is touched: nothing may leave the root or carry a name that would
break a listing, a log line or a catalog entry.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationInfo, field_validator

from pilots.checksums import CHUNK
from sites.config import SshAccess
from sites.registry import resolve
from sites.schema import Seconds, Strict
from transfer.errors import SourceError, TransferError

T = TypeVar("T")

#: URL scheme -> backend, constructed with the destination's `DestinationSettings`.
TRANSFERS = {
    "local": "transfer.local:LocalTransfer",
    "sftp": "transfer.sftp:SftpTransfer",
}


class DestinationSettings(Strict):
    """One named place outputs go to, and how the tower reaches it.

    Written as a URL alone (`local:/path`, `sftp://user@host:port/path`) or as
    a mapping with `url` and the keys below; both load as this.
    """

    #: `local:PATH` (relative: to tower.yaml) or `sftp://user@host[:port]/absolute/path`.
    url: str
    #: sftp: the private key (mode 0600; no agent, no password).
    key_file: str | None = Field(default=None, validate_default=True)
    #: sftp: the server's host key must be here; an unknown or changed key is refused.
    known_hosts: str = "~/.ssh/known_hosts"
    #: sftp: the longest any one wait may last (connecting, a request, a block of data).
    timeout: Seconds = Field(default=60, gt=0)
    #: Transfers to this destination at once (sftp: one connection each).
    parallel: int = Field(default=4, gt=0, le=64)
    #: Whether the site's copy may be deleted once this destination holds it, verified.
    remove_source: bool = False

    @property
    def scheme(self) -> str:
        return self.url.partition(":")[0]

    @property
    def root(self) -> str:
        """The destination's directory: the path of a local destination, or on the server."""
        if self.scheme == "sftp":
            return str(PurePosixPath(unquote(urlsplit(self.url).path)))
        return self.url.partition(":")[2]

    def ssh_access(self) -> SshAccess:
        """How to reach an sftp destination's server (sites/ssh.py connects with it)."""
        if self.scheme != "sftp" or self.key_file is None:
            raise ValueError(f"{self.scheme}: not an sftp destination")
        parts = urlsplit(self.url)
        return SshAccess(host=parts.hostname or "", port=parts.port or 22,
                         user=unquote(parts.username or ""), key_file=self.key_file,
                         known_hosts=self.known_hosts, timeout=self.timeout)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        scheme, colon, rest = url.partition(":")
        if not colon or not scheme:
            raise ValueError("expected SCHEME:..., such as 'local:/path' or "
                             "'sftp://user@host/path'")
        if scheme not in TRANSFERS:
            raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(sorted(TRANSFERS))})")
        if scheme == "local" and not rest:
            raise ValueError("expected a directory after 'local:'")
        if scheme == "sftp":
            _check_sftp_url(url)
        return url

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, key_file: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")  # absent when the url itself was refused
        if url is None:
            return key_file
        sftp = url.partition(":")[0] == "sftp"
        if sftp and not key_file:
            raise ValueError("an sftp destination needs a private key (mode 0600)")
        if key_file and not sftp:
            raise ValueError("only sftp destinations use a key")
        return key_file


def _check_sftp_url(url: str) -> None:
    """The shape `sftp://user@host[:port]/path`; a password is refused, it would end up in logs."""
    usage = "expected sftp://user@host[:port]/path"
    if not url.startswith("sftp://"):
        raise ValueError(usage)
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError("a password does not belong in the URL: sftp destinations log in "
                         "with key_file")
    if not parts.username:
        raise ValueError(f"no user: {usage}")
    if not parts.hostname:
        raise ValueError(f"no host: {usage}")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port when it is read)
    except ValueError:
        raise ValueError(f"the port must be a number from 1 to 65535: {usage}") from None
    if unquote(parts.path).strip("/") == "":
        raise ValueError(f"no path: {usage}")
    if parts.query or parts.fragment:
        raise ValueError(f"no query or fragment: {usage}")
    if any(unicodedata.category(char) == "Cc" for char in unquote(url)):
        raise ValueError("control characters in the URL")


@dataclass(frozen=True)
class FileInfo:
    size: int
    adler32: str


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing."""

    name: str
    directory: bool
    size: int
    #: Last modification, seconds since the epoch, by the destination's clock.
    mtime: float


class Transfer(Protocol):
    """One destination. Implementations are safe to call from several threads at once."""

    def put(self, source: str, path: str) -> FileInfo:
        """Copy local file `source` to `path` under the destination's root.

        The copy is written under a temporary name in the same directory and
        renamed, so it appears under its final name only when complete; a
        failed put leaves nothing under that name. Missing directories are
        made. Returns size and adler32 as read back from the destination.
        Raises SourceError when `source` cannot be read, TransferError when
        the destination fails.
        """

    def get(self, path: str, target: str) -> FileInfo:
        """Copy `path` from the destination to local file `target` (temporary name, rename).

        Returns size and adler32 of what was read. TransferError when either side fails.
        """

    def stat(self, path: str) -> FileInfo | None:
        """Size and adler32 of `path` at the destination, or None if absent."""

    def remove(self, path: str) -> None:
        """Delete `path` at the destination; a missing file is not an error."""

    def listing(self, directory: str) -> list[Entry]:
        """The files and directories directly in `directory` (other kinds, such as symbolic
        links, are left out); an absent directory lists nothing."""

    def remove_directory(self, path: str) -> None:
        """Delete the directory `path` if it is empty; a missing or non-empty one is left."""

    def url(self, path: str) -> str:
        """Where `path` lives, as the catalog records it."""

    def close(self) -> None:
        """Release connections; a later call opens them again."""


def open_transfer(settings: DestinationSettings) -> Transfer:
    """The backend for a destination, chosen by its URL's scheme (`local:`, `sftp://`)."""
    backend: Any = resolve(TRANSFERS, settings.scheme, "transfer backend")
    return backend(settings)  # type: ignore[no-any-return]


def checked_path(where: str, path: str) -> PurePosixPath:
    """`path` as a relative path below the root, or TransferError naming `where` and `path`.

    Refused: absolute paths, `..` and `.` parts, empty parts (`a//b`, a trailing
    `/`), and control characters (NUL, newline, tab, DEL, C1) anywhere.
    """
    def refuse(why: str) -> TransferError:
        return TransferError(f"{where}: {path!r}: refused: {why}")

    if not isinstance(path, str) or not path:
        raise refuse("an empty name")
    if any(unicodedata.category(char) == "Cc" for char in path):
        raise refuse("control characters in the name")
    if path.startswith("/"):
        raise refuse("an absolute path; paths are relative to the destination's root")
    parts = path.split("/")
    if ".." in parts:
        raise refuse("'..' would leave the destination's root")
    if "" in parts or "." in parts:
        raise refuse("an empty or '.' part in the path")
    return PurePosixPath(*parts)


#: What `partial_name` makes: what a sweep may take for the leftover of a dead copy.
PARTIAL = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.part")


def partial_name(name: str) -> str:
    """The temporary name a copy is written under, next to its final `name`.

    Hidden and unique, so two copies of one file never write the same temporary.
    """
    return f".{name}.{uuid.uuid4().hex[:8]}.part"


def partial_of(name: str) -> str | None:
    """The final name whose temporary `name` is, or None if it is not one."""
    match = PARTIAL.fullmatch(name)
    return match["name"] if match else None


def describe(exc: BaseException) -> str:
    """An exception as the end of a message: the system's own words, never empty."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the connection closed"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def copy_source(reader: IO[bytes], writer: IO[bytes], source: str) -> None:
    """Copy all of `reader` to `writer`: a failed read is the source's fault (SourceError),
    a failed write the destination's (the writer's own exception)."""
    while True:
        try:
            chunk = reader.read(CHUNK)
        except OSError as exc:
            raise SourceError(f"cannot read {source}: {describe(exc)}") from exc
        if not chunk:
            return
        writer.write(chunk)


def write_complete(target: Path, write: Callable[[IO[bytes]], T], what: str) -> T:
    """Write local file `target` through `write` under a temporary name, fsync, rename.

    Nothing appears under the final name unless every byte is on disk; on any
    failure the temporary is removed. An OSError becomes TransferError(`what`: reason).
    """
    partial = target.with_name(partial_name(target.name))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as writer:
            result = write(writer)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(partial, target)
        _fsync_directory(target.parent)
    except BaseException as exc:
        # a file system gone read-only refuses the removal too: the first error is the
        # one to report, and the stager's sweep takes the temporary later
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TransferError(f"{what}: {describe(exc)}") from exc
        raise
    return result


def _fsync_directory(directory: Path) -> None:
    # the rename is durable only once the directory entry is on disk
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
