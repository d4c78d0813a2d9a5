"""The `local` transfer backend: a directory on a filesystem the tower can write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pilots.checksums import adler32_file, adler32_stream
from transfer.base import (
    DestinationSettings,
    Entry,
    FileInfo,
    copy_source,
    describe,
    write_complete,
)
from transfer.errors import SourceError, TransferError
from transfer.paths import inside


class LocalTransfer:
    """Implements `Transfer` with a copy to a temporary name, fsync, and rename.

    It keeps no state between calls, so threads may share it freely.
    """

    def __init__(self, settings: DestinationSettings) -> None:
        self.root = Path(settings.root)

    def _target(self, path: str) -> Path:
        # a symbolic link inside the root may still point out of it
        return inside(self.root, path, str(self.root))

    def put(self, source: str, path: str) -> FileInfo:
        target = self._target(path)
        try:
            reader = open(source, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise SourceError(f"cannot read {source}: {describe(exc)}") from exc
        with reader:
            write_complete(target, lambda writer: copy_source(reader, writer, source),
                           f"copy {source} -> {target}")
        info = self.stat(path)
        assert info is not None
        return info

    def get(self, path: str, target: str) -> FileInfo:
        stored = self._target(path)
        try:
            reader = open(stored, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise TransferError(f"cannot read {stored}: {describe(exc)}") from exc
        with reader:
            size, adler32 = write_complete(Path(target),
                                           lambda writer: adler32_stream(reader, writer),
                                           f"copy {stored} -> {target}")
        return FileInfo(size, adler32)

    def stat(self, path: str) -> FileInfo | None:
        target = self._target(path)
        try:
            return FileInfo(target.stat().st_size, adler32_file(target))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransferError(f"stat {target}: {describe(exc)}") from exc

    def remove(self, path: str) -> None:
        target = self._target(path)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise TransferError(f"remove {target}: {describe(exc)}") from exc

    def listing(self, directory: str) -> list[Entry]:
        target = self._target(directory)
        entries = []
        try:
            with os.scandir(target) as scan:
                for item in scan:
                    if item.is_symlink() or not (item.is_file() or item.is_dir()):
                        continue
                    info = item.stat(follow_symlinks=False)
                    entries.append(Entry(item.name, item.is_dir(), info.st_size,
                                         info.st_mtime))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TransferError(f"list {target}: {describe(exc)}") from exc
        return entries

    def remove_directory(self, path: str) -> None:
        target = self._target(path)
        try:
            target.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise TransferError(f"remove {target}: {describe(exc)}") from exc

    def url(self, path: str) -> str:
        return f"file://{self._target(path)}"

    def close(self) -> None:
        pass
