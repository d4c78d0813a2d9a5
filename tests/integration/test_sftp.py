"""The sftp transfer backend against a real OpenSSH server on loopback, started per test so it
can be killed, frozen and started again."""

from __future__ import annotations

import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import SshDaemon
from tests.conftest import write_home
from tests.unit.test_local_transfer import BAD_PATHS
from tower.config import DestinationSettings, load_config
from tower.errors import ConfigError, TransferError
from tower.runtime import Runtime
from transfer.base import FileInfo, open_transfer
from transfer.sftp import SftpTransfer

#: Seconds a destination may wait on the server in the outage tests.
TIMEOUT = 2
#: Slack on top of it for the test's own polling and a loaded machine.
SLACK = 3


def info_of(data: bytes) -> FileInfo:
    return FileInfo(len(data), f"{zlib.adler32(data):08x}")


def settings(server: SshDaemon, root: Path, **more: Any) -> DestinationSettings:
    access = server.server
    values: dict[str, Any] = {"url": f"sftp://{access.user}@{access.host}:{access.port}{root}",
                              "key_file": str(access.key_file),
                              "known_hosts": str(access.known_hosts), **more}
    return DestinationSettings(**values)


def sftp_transfer(server: SshDaemon, root: Path, **more: Any) -> SftpTransfer:
    transfer = open_transfer(settings(server, root, **more))
    assert isinstance(transfer, SftpTransfer)
    return transfer


def source_file(directory: Path, data: bytes, name: str = "source") -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def test_put_get_stat_remove(sftp_server: SshDaemon, tmp_path: Path) -> None:
    root = tmp_path / "store"
    transfer = sftp_transfer(sftp_server, root)
    data = os.urandom(5 << 20) + b"odd tail"
    try:
        assert transfer.put(str(source_file(tmp_path, data)), "ds/out.root") == info_of(data)
        on_disk = (root / "ds" / "out.root").read_bytes()
        assert on_disk == data
        assert transfer.stat("ds/out.root") == info_of(on_disk)
        assert transfer.stat("ds/absent") is None
        access = sftp_server.server
        assert transfer.url("ds/out.root") == (
            f"sftp://root@{access.host}:{access.port}{root}/ds/out.root")

        assert transfer.get("ds/out.root", str(tmp_path / "back" / "copy")) == info_of(data)
        assert (tmp_path / "back" / "copy").read_bytes() == data
        assert os.listdir(tmp_path / "back") == ["copy"]
        with pytest.raises(TransferError, match=r"/ds/absent: get: No such file"):
            transfer.get("ds/absent", str(tmp_path / "back" / "nothing"))
        assert os.listdir(tmp_path / "back") == ["copy"]

        transfer.remove("ds/out.root")
        transfer.remove("ds/out.root")
        assert transfer.stat("ds/out.root") is None
        assert os.listdir(root / "ds") == []
    finally:
        transfer.close()


def test_put_makes_missing_directories_and_replaces_an_older_copy(
        sftp_server: SshDaemon, tmp_path: Path) -> None:
    root = tmp_path / "store"
    transfer = sftp_transfer(sftp_server, root)
    try:
        first, second = b"first version\n", os.urandom(70_000)
        transfer.put(str(source_file(tmp_path, first)), "a/b/c/file.dat")
        assert (root / "a" / "b" / "c" / "file.dat").read_bytes() == first
        assert transfer.put(str(source_file(tmp_path, second)), "a/b/c/file.dat") == (
            info_of(second))
        assert os.listdir(root / "a" / "b" / "c") == ["file.dat"]
        assert (root / "a" / "b" / "c" / "file.dat").read_bytes() == second
    finally:
        transfer.close()


@pytest.mark.parametrize(("hosts", "message"), [
    ("empty_known_hosts", "host key unknown: add it to"),
    ("wrong_known_hosts", "the host key differs from the one in"),
])
def test_an_unknown_or_changed_host_key_is_refused(
        sftp_server: SshDaemon, tmp_path: Path, hosts: str, message: str) -> None:
    known_hosts = getattr(sftp_server.server, hosts)
    transfer = sftp_transfer(sftp_server, tmp_path / "store", known_hosts=str(known_hosts))
    for call in (lambda: transfer.put(str(source_file(tmp_path, b"data")), "ds/f"),
                 lambda: transfer.stat("ds/f"), lambda: transfer.remove("ds/f")):
        with pytest.raises(TransferError, match=message) as caught:
            call()
        assert caught.value.field == "known_hosts"
    assert not (tmp_path / "store").exists()
    # refused, never added
    assert known_hosts.read_text() == getattr(sftp_server.server, hosts).read_text()


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_before_the_server_is_asked(
        sftp_server: SshDaemon, tmp_path: Path, path: str) -> None:
    transfer = sftp_transfer(sftp_server, tmp_path / "store")
    source = source_file(tmp_path, b"data")
    # no server at all: a refusal that came after connecting would say so
    sftp_server.stop()
    for call in (lambda: transfer.put(str(source), path), lambda: transfer.stat(path),
                 lambda: transfer.get(path, str(tmp_path / "target")),
                 lambda: transfer.remove(path), lambda: transfer.url(path)):
        with pytest.raises(TransferError, match="refused"):
            call()
    assert not (tmp_path / "store").exists() and not (tmp_path / "target").exists()


def put_in_background(transfer: SftpTransfer, source: Path,
                      path: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A put in a thread; its exception and the moment it ended land in the dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = transfer.put(str(source), path)
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_partial(directory: Path, thread: threading.Thread) -> None:
    """Until the put has written a good part of its temporary file."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        if directory.exists() and any(p.name.endswith(".part") and p.stat().st_size > 1 << 20
                                      for p in directory.iterdir()):
            return
        time.sleep(0.01)
    pytest.fail("the put never got under way")


def large_source(tmp_path: Path) -> Path:
    """256 MiB of zeros without using the disk: a put that takes seconds on loopback."""
    path = tmp_path / "large"
    with path.open("wb") as stream:
        stream.truncate(256 << 20)
    return path


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_a_server_lost_mid_put_fails_in_time_and_the_transfer_recovers(
        sftp_server: SshDaemon, tmp_path: Path, outage: str) -> None:
    root = tmp_path / "store"
    transfer = sftp_transfer(sftp_server, root, timeout=TIMEOUT)
    try:
        thread, outcome = put_in_background(transfer, large_source(tmp_path), "ds/large")
        wait_for_partial(root / "ds", thread)
        lost = time.monotonic()
        if outage == "killed":
            sftp_server.stop()
        else:
            sftp_server.pause()
        thread.join(TIMEOUT + SLACK + 5)
        assert not thread.is_alive(), "the put hangs"
        error = outcome.get("error")
        assert isinstance(error, TransferError), outcome
        assert str(error).startswith(f"{transfer.url('ds/large')}: put: ")
        assert outcome["ended"] - lost < TIMEOUT + SLACK
        if outage == "frozen":
            assert f"no answer within {TIMEOUT}s" in str(error)
            # a new connection to the frozen server gives up in time too
            started = time.monotonic()
            with pytest.raises(TransferError, match=f"no SSH handshake within {TIMEOUT}s"):
                transfer.stat("ds/large")
            assert time.monotonic() - started < TIMEOUT + SLACK
            sftp_server.stop()
        assert not (root / "ds" / "large").exists()

        sftp_server.start()
        data = os.urandom(100_000)
        assert transfer.put(str(source_file(tmp_path, data)), "ds/large") == info_of(data)
        assert (root / "ds" / "large").read_bytes() == data
    finally:
        transfer.close()


def test_parallel_puts_from_threads_all_land_intact(sftp_server: SshDaemon,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "store"
    transfer = sftp_transfer(sftp_server, root, parallel=3)
    payloads = {f"ds/{index % 3}/file-{index}": os.urandom(200_000 + index * 1_001)
                for index in range(12)}
    sources = {path: source_file(tmp_path, data, f"source-{index}")
               for index, (path, data) in enumerate(payloads.items())}
    results: dict[str, FileInfo] = {}
    errors: list[BaseException] = []

    def worker(paths: list[str]) -> None:
        try:
            for path in paths:
                results[path] = transfer.put(str(sources[path]), path)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            errors.append(exc)

    paths = list(payloads)
    threads = [threading.Thread(target=worker, args=(paths[i::6],)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert results == {path: info_of(data) for path, data in payloads.items()}
        for path, data in payloads.items():
            assert (root / path).read_bytes() == data
        assert not [p for p in root.rglob("*") if p.name.endswith(".part")]
        # connections are reused, and never more than `parallel` were opened
        logins = sftp_server.log.read_text().count("Accepted publickey for root")
        assert 1 <= logins <= 3, logins
    finally:
        transfer.close()


def test_a_destination_in_tower_yaml_reaches_the_server_through_the_runtime(
        sftp_server: SshDaemon, tmp_path: Path) -> None:
    access = sftp_server.server
    key = tmp_path / "home" / "id_store"
    key.parent.mkdir()
    key.write_bytes(access.key_file.read_bytes())
    key.chmod(0o600)
    remote = {"url": f"sftp://root@{access.host}:{access.port}{tmp_path / 'store'}",
              "key_file": "id_store", "known_hosts": str(access.known_hosts), "timeout": "5s"}
    path = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}",
                      storage={"destinations": {"remote": remote}, "default": ["remote"]})
    runtime = Runtime.open(load_config(path))
    try:
        data = b"through tower.yaml\n"
        assert runtime.transfer("remote").put(str(source_file(tmp_path, data)), "d/f") == (
            info_of(data))
        assert runtime.transfer("remote") is runtime.transfer("remote")
    finally:
        runtime.close()
    assert (tmp_path / "store" / "d" / "f").read_bytes() == data

    key.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"storage.destinations.remote.key_file: {key} has mode 0644" in str(caught.value)


def test_a_connection_the_server_dropped_between_calls_is_opened_again(
        sftp_server: SshDaemon, tmp_path: Path) -> None:
    transfer = sftp_transfer(sftp_server, tmp_path / "store", timeout=TIMEOUT)
    try:
        transfer.put(str(source_file(tmp_path, b"one")), "f")
        sftp_server.stop()
        sftp_server.start()
        assert transfer.stat("f") == info_of(b"one")
    finally:
        transfer.close()
