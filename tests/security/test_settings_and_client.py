"""What a site admin's or a user's settings could smuggle: a batch directive in a site
name, a private key others can read, a password echoed in an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_home
from tower.cli import main
from tower.config import load_config
from tower.errors import ConfigError

pytestmark = pytest.mark.one_database


@pytest.mark.parametrize(("site", "field"), [
    ({"batch": "slurm", "batch_options": {"partition": "regular --uid=0"}}, "partition"),
    ({"batch": "slurm", "batch_options": {"account": "physics\t--uid=0"}}, "account"),
    ({"batch": "slurm", "batch_options": {"qos": "normal --exclusive"}}, "qos"),
    ({"batch": "slurm", "batch_options": {"partition": "debug`touch x`$(touch x)"}},
     "partition"),
    ({"batch": "slurm", "batch_options": {"constraint": "intel --uid=0"}}, "constraint"),
    ({"batch": "slurm", "batch_options": {"extra": ["--gpus=1 --uid=0"]}}, "extra"),
    ({"batch": "condor", "batch_options": {"accounting_group": "group_a priority = 9"}},
     "accounting_group"),
])
def test_a_site_value_that_would_become_a_directive_is_refused_at_load(
        tmp_path: Path, site: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_home(tmp_path, "sqlite:///x.db", site))
    assert caught.value.field == f"sites.local.batch_options.{field}"
    assert "sites.yaml" in str(caught.value)


def test_good_site_names_still_load(tmp_path: Path) -> None:
    config = load_config(write_home(tmp_path, "sqlite:///x.db", {
        "batch": "slurm", "batch_options": {"partition": "debug,long", "account": "lz-prod",
                                            "qos": "normal", "constraint": "intel&(ib|fat)"}}))
    assert config.sites["local"].batch_options["partition"] == "debug,long"


def ssh_site(key: Path) -> dict[str, Any]:
    return {"ssh": {"host": "127.0.0.1", "user": "prod", "key_file": str(key)}}


def test_a_site_key_others_can_read_is_refused_at_load(tmp_path: Path) -> None:
    key = tmp_path / "id_site"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(write_home(tmp_path, "sqlite:///x.db", ssh_site(key)))
    assert caught.value.field == "sites.local.ssh.key_file"
    assert f"{key} has mode 0644" in str(caught.value) and "chmod 600" in str(caught.value)
    key.chmod(0o600)
    assert load_config(write_home(tmp_path, "sqlite:///x.db", ssh_site(key))).sites["local"].ssh


@pytest.mark.parametrize("url", [
    "https://user:hunter2@127.0.0.1:1/",       # nothing listens: requests' error
    "https://user:hunter2@127.0.0.1:99999/",   # no such port: the URL's own error
    "http://user:hunter2@/",
])
def test_a_password_in_the_url_is_never_echoed(capsys: pytest.CaptureFixture[str],
                                               url: str) -> None:
    try:
        code = main(["--url", url, "status"])
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    said = capsys.readouterr()
    assert code != 0
    assert "hunter2" not in said.out + said.err and said.err.startswith("tower: ")
