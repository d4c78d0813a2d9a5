"""adler32 of files, as the grid writes it: eight lowercase hex digits."""

from __future__ import annotations

import zlib
from pathlib import Path

CHUNK = 1 << 20


def adler32_file(path: str | Path) -> str:
    """The adler32 of a file's content, read in 1 MiB chunks."""
    value = 1
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"
