"""storage.destinations in tower.yaml: a URL or a mapping, resolved at load, refusals named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_home
from tower.config import DestinationSettings, load_config
from tower.errors import ConfigError

SFTP = "sftp://prod@data.example.org:2222/srv/store"


def load(tmp_path: Path, destinations: dict[str, Any]) -> dict[str, DestinationSettings]:
    path = write_home(tmp_path, "sqlite:///x.db",
                      storage={"destinations": destinations, "default": []})
    return load_config(path).storage.destinations


def private_key(tmp_path: Path, name: str = "key", mode: int = 0o600) -> Path:
    key = tmp_path / name
    key.write_text("not parsed at load\n")
    key.chmod(mode)
    return key


def test_a_url_alone_is_a_destination_with_defaults(tmp_path: Path) -> None:
    store = load(tmp_path, {"store": "local:store"})["store"]
    assert store == DestinationSettings(url=f"local:{tmp_path / 'store'}",
                                        known_hosts=str(Path("~/.ssh/known_hosts").expanduser()))
    assert (store.scheme, store.root) == ("local", str(tmp_path / "store"))
    assert (store.key_file, store.timeout, store.parallel, store.remove_source) == (
        None, 60, 4, False)


def test_an_sftp_mapping_resolves_its_files_next_to_tower_yaml(tmp_path: Path) -> None:
    private_key(tmp_path, "id_store")
    remote = load(tmp_path, {"remote": {
        "url": SFTP, "key_file": "id_store", "known_hosts": "hosts", "timeout": "2m",
        "parallel": 8, "remove_source": True}})["remote"]
    assert remote.key_file == str(tmp_path / "id_store")
    assert remote.known_hosts == str(tmp_path / "hosts")
    assert (remote.scheme, remote.root, remote.timeout, remote.parallel) == (
        "sftp", "/srv/store", 120, 8)
    assert remote.remove_source is True
    access = remote.ssh_access()
    assert (access.host, access.port, access.user) == ("data.example.org", 2222, "prod")
    assert (access.key_file, access.known_hosts, access.timeout) == (
        str(tmp_path / "id_store"), str(tmp_path / "hosts"), 120)


def test_an_sftp_url_without_port_uses_22(tmp_path: Path) -> None:
    private_key(tmp_path)
    remote = load(tmp_path, {"r": {"url": "sftp://prod@host/data/", "key_file": "key"}})["r"]
    assert (remote.ssh_access().port, remote.root) == (22, "/data")


@pytest.mark.parametrize(("entry", "key", "message"), [
    ("nowhere", "url", "expected SCHEME:..., such as 'local:/path' or 'sftp://user@host/path'"),
    ("ftp://host/data", "url", "unknown scheme 'ftp' (known: local, sftp)"),
    ("local:", "url", "expected a directory after 'local:'"),
    ("sftp:prod@host/data", "url", "expected sftp://user@host[:port]/path"),
    ("sftp://host/data", "url", "no user: expected sftp://user@host[:port]/path"),
    ("sftp://prod@host", "url", "no path"),
    ("sftp://prod@host/", "url", "no path"),
    ("sftp://prod@host:99999/data", "url", "the port must be a number from 1 to 65535"),
    ("sftp://prod@host/data?x=1", "url", "no query or fragment"),
    ("sftp://prod@host/da%0Ata", "url", "control characters in the URL"),
    ("sftp://prod@host/data", "key_file", "an sftp destination needs a private key"),
    ({"url": "sftp://prod@host/data"}, "key_file", "an sftp destination needs a private key"),
    ({"url": "local:/data", "key_file": "key"}, "key_file", "only sftp destinations use a key"),
    ({"url": "local:/data", "colour": "blue"}, "colour", "unknown key"),
    ({"key_file": "key"}, "url", "required key is missing"),
    ({"url": SFTP, "key_file": "key", "parallel": 0}, "parallel", "greater than 0"),
    ({"url": SFTP, "key_file": "key", "timeout": "soon"}, "timeout", "expected a duration"),
])
def test_a_bad_destination_is_refused_naming_file_and_key(
        tmp_path: Path, entry: Any, key: str, message: str) -> None:
    private_key(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"x": entry})
    assert str(caught.value).startswith(f"{tmp_path / 'tower.yaml'}: "
                                        f"storage.destinations.x.{key}: "), caught.value
    assert message in str(caught.value)
    assert caught.value.field == f"storage.destinations.x.{key}"


def test_a_password_in_an_sftp_url_is_refused_and_not_repeated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="storage.destinations.x.url: a password does not "
                                          "belong in the URL") as caught:
        load(tmp_path, {"x": {"url": "sftp://prod:hunter2@host/data", "key_file": "key"}})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    key = private_key(tmp_path, mode=mode)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"x": {"url": SFTP, "key_file": "key"}})
    assert str(caught.value) == (
        f"{tmp_path / 'tower.yaml'}: storage.destinations.x.key_file: {key} has mode "
        f"{mode:04o}: a private key must be readable by its owner alone (chmod 600 {key})")
    assert caught.value.field == "storage.destinations.x.key_file"


def test_a_missing_private_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage.destinations.x.key_file: .*/absent: "
                                          "No such file or directory"):
        load(tmp_path, {"x": {"url": SFTP, "key_file": "absent"}})


def test_a_key_only_its_owner_may_read_is_accepted(tmp_path: Path) -> None:
    private_key(tmp_path, mode=0o400)
    assert load(tmp_path, {"x": {"url": SFTP, "key_file": "key"}})["x"].key_file


def test_storage_default_still_names_destinations(tmp_path: Path) -> None:
    path = write_home(tmp_path, "sqlite:///x.db",
                      storage={"destinations": {"a": "local:a"}, "default": ["b"]})
    with pytest.raises(ConfigError, match="storage.default: 'b' is not a destination"):
        load_config(path)
