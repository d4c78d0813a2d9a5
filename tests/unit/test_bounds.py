"""Files the tower loads (tower.yaml, sites.yaml, policies, production requests, the client
file): a value that can never work, or that would overflow later in a loop, is refused at
load with the file and key named, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sites.schema import MAX_NODES, json_document
from tests.conftest import write_home
from tower.cli import main as tower_main
from tower.config import load_config
from tower.errors import ConfigError, GridtowerError, SpecError
from tower.management.overrides import parse
from tower.management.specs import load_requests
from tower.remote import client_settings
from tower.retries.policy import load_policies

AGES = "9" * 400 + "d"  # past what a float holds


def _home(tmp_path: Path, site: dict[str, Any] | None = None, **settings: Any) -> Path:
    return write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}", site,
                      **settings)


@pytest.mark.parametrize(("settings", "field"), [
    ({"monitor": {"heartbeat_timeout": 10**30}}, "monitor.heartbeat_timeout"),
    ({"monitor": {"heartbeat_timeout": 10**15}}, "monitor.heartbeat_timeout"),
    ({"monitor": {"heartbeat_interval": AGES}}, "monitor.heartbeat_interval"),
    ({"monitor": {"claim_timeout": "99999999999d"}}, "monitor.claim_timeout"),
    ({"health": {"cooldown": AGES}}, "health.cooldown"),
    ({"health": {"cooldown": float("inf")}}, "health.cooldown"),
    ({"loops": {"busy_pause": 1e300}}, "loops.busy_pause"),
    ({"storage": {"retry_delay": 10**20}}, "storage.retry_delay"),
    ({"retry": {"policy": "quick", "policies": {"quick": {
        "backoff": {"initial": 10**15}}}}}, "policies.quick.backoff.initial"),
])
def test_a_duration_of_ages_in_tower_yaml_is_refused_by_key(
        tmp_path: Path, settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_home(tmp_path, **settings))
    assert caught.value.field == field, str(caught.value)


@pytest.mark.parametrize(("pilot", "field"), [
    ({"walltime": 10**30}, "walltime"),
    ({"walltime": AGES}, "walltime"),
    ({"idle_timeout": "100000000d"}, "idle_timeout"),
])
def test_a_pilot_duration_of_ages_in_sites_yaml_is_refused_by_key(
        tmp_path: Path, pilot: dict[str, Any], field: str) -> None:
    site = {"pilot": {"slots": 1, "walltime": "10m", **pilot}}
    with pytest.raises(ConfigError) as caught:
        load_config(_home(tmp_path, site))
    assert str(caught.value.field).endswith(field), str(caught.value)


def test_a_config_nested_100000_deep_is_refused(tmp_path: Path) -> None:
    path = _home(tmp_path)
    path.write_text("loops: " + "[" * 100_000)
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(path)


def test_a_yaml_alias_bomb_is_refused_before_it_is_walked(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match=f"more than {MAX_NODES} values"):
        load_requests(path)


def test_a_production_file_of_invalid_utf8_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "request.yaml"
    path.write_bytes(b"name: caf\xe9\nsoftware: s\n")
    with pytest.raises(SpecError, match="not UTF-8") as caught:
        load_requests(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("policies", "field"), [
    ({"mine": {"extends": ["standard", "quick"]}}, "policies.mine.extends"),
    ({"mine": {"extends": {"a": "b"}}}, "policies.mine.extends"),
    ({"p0": {"max_attempts": 3},
      **{f"p{n}": {"extends": f"p{n - 1}"} for n in range(1, 3000)}}, "extends"),
])
def test_a_policy_extending_a_list_or_a_long_chain_is_refused(
        tmp_path: Path, policies: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policies(policies, tmp_path)
    assert str(caught.value.field).endswith(field), str(caught.value)


@pytest.mark.parametrize("key", ["cert", "key", "ca"])
def test_a_client_file_with_a_mapping_for_a_path_is_refused_by_key(
        tmp_path: Path, key: str) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump({"url": "https://tower:8470", key: {"a": "b"}}))
    with pytest.raises(ConfigError) as caught:
        client_settings(None, None, None, None, str(path))
    assert caught.value.field == key


@pytest.mark.parametrize(("text", "field"), [
    ("[1, NaN]", None),
    ('{"a": Infinity}', None),
    ('{"a": [' + "1" * 5000 + "]}", None),
    (b'{"a": "\xff"}', None),
    ('{"a": [' + str(2**63) + "]}", "a.0"),
    ('{"a\\u0000": 1}', None),
    ('{"a": {"b": "x\\u0000"}}', "a.b"),
])
def test_a_json_body_out_of_bounds_is_refused_by_place(text: str | bytes, field: str | None
                                                         ) -> None:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(GridtowerError) as caught:
        json_document(data, "request body")
    assert caught.value.field == field, str(caught.value)


def test_a_set_value_of_ages_names_its_key() -> None:
    with pytest.raises(SpecError) as caught:
        parse([f"walltime={10**30}"])
    assert caught.value.field == "walltime"
    with pytest.raises(SpecError) as caught:
        parse(["a" + ".b" * 100 + "=1"])
    assert caught.value.field == "set"


def test_tower_submit_of_invalid_utf8_names_the_file_without_a_traceback(
        tower_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "request.yaml"
    path.write_bytes(b"name: caf\xe9\nsoftware: s\n")
    assert tower_main(["--config", str(tower_yaml), "submit", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: not UTF-8" in error and "Traceback" not in error
