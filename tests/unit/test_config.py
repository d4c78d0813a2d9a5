"""tower.yaml and sites.yaml: found in order, overridden by the environment, errors named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import write_home
from tower.config import find_config, load_config
from tower.errors import ConfigError


def test_a_starter_home_loads(tower_yaml: Path) -> None:
    config = load_config(tower_yaml)
    assert config.sites["local"].pilot.walltime == 600
    assert config.storage.destinations["store"].url == f"local:{tower_yaml.parent / 'store'}"


def test_found_by_flag_then_environment_then_home(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWER_CONFIG", str(tmp_path / "env.yaml"))
    monkeypatch.setenv("TOWER_HOME", str(tmp_path / "home"))
    assert find_config(tmp_path / "flag.yaml") == tmp_path / "flag.yaml"
    assert find_config() == tmp_path / "env.yaml"
    monkeypatch.delenv("TOWER_CONFIG")
    assert find_config() == tmp_path / "home" / "tower.yaml"


def test_environment_overrides_database_and_broker(tower_yaml: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWER_DATABASE_URL", "postgresql://u@db.example/x")
    monkeypatch.setenv("TOWER_BROKER_URL", "amqp://u:p@mq.example/")
    config = load_config(tower_yaml)
    assert config.database_url == "postgresql://u@db.example/x"
    assert config.broker_url == "amqp://u:p@mq.example/"


@pytest.mark.parametrize(("change", "message"), [
    ({"loops": {"interval": "soon"}}, "loops.interval: expected a duration"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"api": {"port": 70000}}, "api.port: Input should be less than or equal to 65535"),
    ({"storage": {"destinations": {"x": "nowhere"}}},
     "storage.destinations.x.url: expected SCHEME:..., such as 'local:/path'"),
    ({"storage": {"default": ["nope"]}}, "storage.default: 'nope' is not a destination"),
])
def test_tower_yaml_errors_name_file_and_key(tmp_path: Path, change: dict[str, object],
                                             message: str) -> None:
    path = write_home(tmp_path, "sqlite:///x.db", **change)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(("site", "message"), [
    ({"pilot": {"slots": 0}}, "sites.local.pilot.slots: Input should be greater than 0"),
    ({"limits": {"max_running": "many"}}, "sites.local.limits.max_running"),
    ({"pilot": {"memory_tolerance": -0.1}},
     "sites.local.pilot.memory_tolerance: Input should be greater than or equal to 0"),
    ({"pilot": {"memory_watch": "sometimes"}}, "sites.local.pilot.memory_watch"),
    ({"scratch": "relative/dir"}, "scratch must be an absolute path"),
    ({"partition": "debug"}, "sites.local.partition: unknown key"),
])
def test_sites_yaml_errors_name_file_and_key(tmp_path: Path, site: dict[str, object],
                                             message: str) -> None:
    path = write_home(tmp_path, "sqlite:///x.db", site=site)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{tmp_path / 'sites.yaml'}: ")
    assert message in str(caught.value)


def test_a_missing_config_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tower init"):
        load_config(tmp_path / "absent.yaml")


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tower.yaml"
    path.write_text("database: x\napi: {bind: [\n")
    with pytest.raises(ConfigError, match=r"tower.yaml:\d+: invalid YAML"):
        load_config(path)


def test_an_unknown_batch_system_is_refused_at_load_naming_the_key_and_the_known(
        tmp_path: Path) -> None:
    path = write_home(tmp_path, "sqlite:///x.db", site={"batch": "slrum"})
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert "sites.yaml: sites.local.batch: unknown batch system 'slrum'" in message
    assert "(known: arc, condor, local, slurm); did you mean 'slurm'?" in message
    assert refused.value.field == "sites.local.batch"


def test_init_writes_a_working_home(tmp_path: Path) -> None:
    from tower.home import init

    written = init(tmp_path / "new")
    config = load_config(written[0])
    expected = (tmp_path / "new").resolve() / "sites/local/scratch"
    assert config.sites["local"].scratch == str(expected)
    assert yaml.safe_load_all((tmp_path / "new" / "production.yaml").read_text())
    with pytest.raises(Exception, match="exists already"):
        init(tmp_path / "new")
