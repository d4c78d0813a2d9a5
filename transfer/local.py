"""The `local` transfer backend: a directory on a filesystem the tower can write."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pilots.checksums import adler32_file
from tower.errors import SourceError, TransferError
from transfer.base import FileInfo


class LocalTransfer:
    """Implements `Transfer` with a copy to a temporary name, fsync, and rename."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def _target(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise TransferError(f"{path!r} leaves the destination root {self.root}")
        return target

    def put(self, source: str, path: str) -> FileInfo:
        target = self._target(path)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            reader = open(source, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise SourceError(f"cannot read {source}: {exc.strerror or exc}") from exc
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with reader, open(partial, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(partial, target)
            _fsync_directory(target.parent)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise TransferError(f"copy {source} -> {target}: {exc.strerror or exc}") from exc
        info = self.stat(path)
        assert info is not None
        return info

    def stat(self, path: str) -> FileInfo | None:
        target = self._target(path)
        try:
            return FileInfo(target.stat().st_size, adler32_file(target))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransferError(f"stat {target}: {exc.strerror or exc}") from exc

    def url(self, path: str) -> str:
        return f"file://{self._target(path)}"


def _fsync_directory(directory: Path) -> None:
    # the rename is durable only once the directory entry is on disk
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
