"""The pilot packs an attempt's log for the tower: whole when it fits the site's bound,
else its start and end with a line saying how much was cut; nothing when the bound is 0."""

from __future__ import annotations

import gzip
from pathlib import Path

from pilots.logship import cut_marker, pack


def test_a_log_within_the_bound_is_shipped_whole(tmp_path: Path) -> None:
    log = tmp_path / "payload.log"
    log.write_bytes(b"hello\nworld\n" * 100)
    packed = pack(log, 10_000)
    assert packed is not None and packed.cut == 0
    assert gzip.decompress(packed.data) == log.read_bytes()


def test_a_longer_log_keeps_its_start_and_end(tmp_path: Path) -> None:
    log = tmp_path / "payload.log"
    body = bytes(range(256)) * 4000  # 1 024 000 bytes
    log.write_bytes(body)
    packed = pack(log, 1000)
    assert packed is not None and packed.cut == len(body) - 1000
    assert gzip.decompress(packed.data) == body[:500] + cut_marker(packed.cut) + body[-500:]


def test_no_bound_or_no_log_ships_nothing(tmp_path: Path) -> None:
    log = tmp_path / "payload.log"
    log.write_bytes(b"x")
    assert pack(log, 0) is None
    assert pack(tmp_path / "missing.log", 100) is None


def test_an_empty_log_ships_nothing(tmp_path: Path) -> None:
    # a silent payload (/bin/true) costs no request to the tower beside its report
    log = tmp_path / "payload.log"
    log.write_bytes(b"")
    assert pack(log, 100) is None
