"""The `Transfer` seam: put a file at a destination under a temporary name, then rename."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tower.registry import resolve

#: URL scheme -> backend.
TRANSFERS = {
    "local": "transfer.local:LocalTransfer",
}


@dataclass(frozen=True)
class FileInfo:
    size: int
    adler32: str


class Transfer(Protocol):
    def put(self, source: str, path: str) -> FileInfo:
        """Copy local file `source` to `path` under the destination's root.

        The copy appears under its final name only when complete. Returns size
        and adler32 as read back from the destination. Raises SourceError when `source`
        cannot be read, TransferError when the destination fails.
        """

    def stat(self, path: str) -> FileInfo | None:
        """Size and adler32 of `path` at the destination, or None if absent."""

    def url(self, path: str) -> str:
        """Where `path` lives, as the catalog records it."""


def open_transfer(url: str) -> Transfer:
    """The backend for a destination URL such as `local:/data/store`."""
    scheme, _, rest = url.partition(":")
    backend: Any = resolve(TRANSFERS, scheme, "transfer backend")
    return backend(rest)  # type: ignore[no-any-return]
