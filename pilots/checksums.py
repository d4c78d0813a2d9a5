"""adler32 of files, as the grid writes it: eight lowercase hex digits."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def adler32_file(path: str | Path) -> str:
    """The adler32 of a file's content, read in 1 MiB chunks."""
    with open(path, "rb") as stream:
        return adler32_stream(stream)[1]


def adler32_stream(stream: IO[bytes], copy_to: IO[bytes] | None = None) -> tuple[int, str]:
    """Size and adler32 of what is left in `stream`, also written to `copy_to` if given.

    A copy checksummed on its way costs one read, not two (a remote file is
    read once, over the network).
    """
    value, size = 1, 0
    while chunk := stream.read(CHUNK):
        value = zlib.adler32(chunk, value)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return size, f"{value & 0xFFFFFFFF:08x}"
