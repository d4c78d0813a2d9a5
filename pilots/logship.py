"""An attempt's full stdout and stderr, packed for the tower: gzip-compressed, at most the
site's `log_bytes` of it (a longer log keeps its start and its end, with a line saying how
much was cut between them), read in chunks so a huge log never sits in memory whole."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 16


@dataclass(frozen=True)
class PackedLog:
    #: The gzip-compressed log.
    data: bytes
    #: Bytes of the log that were left out (0: it is whole).
    cut: int


def cut_marker(cut: int) -> bytes:
    return f"\n[... gridtower: {cut} bytes of this log cut here ...]\n".encode()


def pack(path: Path, limit: int) -> PackedLog | None:
    """The log at `path` packed to at most `limit` bytes (before compression, the marker
    line aside); None when `limit` is 0 or the log is missing or empty."""
    if limit <= 0:
        return None
    out = io.BytesIO()
    try:
        with open(path, "rb") as stream:
            size = stream.seek(0, io.SEEK_END)
            if not size:
                return None  # nothing to ship: the report's empty tail says it all
            stream.seek(0)
            cut = max(0, size - limit)
            head = limit // 2 if cut else size
            with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as packed:
                _copy(stream, packed, head)
                if cut:
                    packed.write(cut_marker(cut))
                    stream.seek(size - (limit - head))
                    _copy(stream, packed, limit - head)
    except OSError:
        return None
    return PackedLog(out.getvalue(), cut)


def _copy(source: io.BufferedReader, target: gzip.GzipFile, count: int) -> None:
    while count > 0:
        chunk = source.read(min(CHUNK, count))
        if not chunk:
            return
        target.write(chunk)
        count -= len(chunk)
