"""The local transfer backend: copies complete under their final name, paths kept in the root."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from tower.config import DestinationSettings
from tower.errors import SourceError, TransferError
from transfer.base import FileInfo, open_transfer, write_complete
from transfer.local import LocalTransfer

#: Paths every backend refuses before touching anything (tests/integration/test_sftp.py too).
BAD_PATHS = ["", "/etc/passwd", "..", "../x", "a/../../x", "a/..", "a//b", "a/", "./a",
             "a\x00b", "a\nb", "a\rb", "a\tb", "a\x1bb", "a\x7fb", "a\x85b"]


def info_of(data: bytes) -> FileInfo:
    return FileInfo(len(data), f"{zlib.adler32(data):08x}")


@pytest.fixture
def store(tmp_path: Path) -> LocalTransfer:
    transfer = open_transfer(DestinationSettings(url=f"local:{tmp_path / 'store'}"))
    assert isinstance(transfer, LocalTransfer)
    return transfer


def test_put_get_stat_remove(store: LocalTransfer, tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    source = tmp_path / "source"
    source.write_bytes(data)
    assert store.put(str(source), "ds/a/out.root") == info_of(data)
    final = tmp_path / "store" / "ds" / "a" / "out.root"
    assert final.read_bytes() == data
    assert store.stat("ds/a/out.root") == info_of(data)
    assert store.url("ds/a/out.root") == f"file://{final}"
    assert store.get("ds/a/out.root", str(tmp_path / "back" / "copy")) == info_of(data)
    assert (tmp_path / "back" / "copy").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "back")) == ["copy"]
    store.remove("ds/a/out.root")
    store.remove("ds/a/out.root")
    assert store.stat("ds/a/out.root") is None
    assert os.listdir(final.parent) == []


def test_a_missing_source_is_a_source_error(store: LocalTransfer, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        store.put(str(tmp_path / "absent"), "x")
    assert not (tmp_path / "store").exists()


def test_getting_a_missing_file_fails_and_writes_nothing(store: LocalTransfer,
                                                        tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="No such file"):
        store.get("absent", str(tmp_path / "target"))
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_before_anything_is_touched(
        store: LocalTransfer, tmp_path: Path, path: str) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    for call in (lambda: store.put(str(source), path), lambda: store.stat(path),
                 lambda: store.get(path, str(tmp_path / "target")),
                 lambda: store.remove(path), lambda: store.url(path)):
        with pytest.raises(TransferError, match="refused"):
            call()
    assert not (tmp_path / "store").exists() and not (tmp_path / "target").exists()


def test_a_link_out_of_the_root_is_refused(store: LocalTransfer, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "out").symlink_to(tmp_path)
    with pytest.raises(TransferError, match="leaves its root"):
        store.stat("out/source")


def test_a_failed_write_whose_cleanup_fails_too_reports_the_first_error(tmp_path: Path) -> None:
    """The directory of the temporary is swapped for a file while it is written (as a
    file system gone read-only refuses the removal): the write's own error is reported
    as a TransferError, not the cleanup's."""
    directory = tmp_path / "dataset"

    def write(writer: object) -> None:
        directory.rename(tmp_path / "moved")
        directory.write_bytes(b"not a directory")
        raise OSError(5, "Input/output error")

    with pytest.raises(TransferError, match="Input/output error"):
        write_complete(directory / "file.dat", write, "copy")
