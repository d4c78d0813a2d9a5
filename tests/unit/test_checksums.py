from __future__ import annotations

import zlib
from pathlib import Path

from pilots.checksums import CHUNK, adler32_file


def test_adler32_of_a_known_value(tmp_path: Path) -> None:
    # the textbook example: adler32("Wikipedia") = 0x11E60398
    path = tmp_path / "w"
    path.write_bytes(b"Wikipedia")
    assert adler32_file(path) == "11e60398"


def test_adler32_of_an_empty_file_is_one(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert adler32_file(path) == "00000001"


def test_adler32_across_chunks_equals_one_pass(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 256 * 3 + 7)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert adler32_file(path) == f"{zlib.adler32(data):08x}"
