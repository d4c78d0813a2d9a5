"""Item 5 of issue 17: a plain-HTTP API that other hosts reach trusts every caller, so it is
refused at load unless api.insecure says so, and then shown in red."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_home
from tower.cli import main
from tower.config import load_config
from tower.errors import ConfigError
from tower.runtime import Runtime
from web.app import create_app

pytestmark = pytest.mark.one_database


def home(tmp_path: Path, **api: object) -> Path:
    return write_home(tmp_path, f"sqlite:///{tmp_path / 'tower.db'}",
                      api={"port": 0, **api})


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.7", "tower.example.org"])
def test_plain_http_on_an_address_others_reach_is_refused(tmp_path: Path, bind: str) -> None:
    with pytest.raises(ConfigError, match=r"tower.yaml: api: api.bind .* without api.tls "
                                          r".*api.insecure: true"):
        load_config(home(tmp_path, bind=bind))


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_plain_http_on_loopback_is_fine(tmp_path: Path, bind: str) -> None:
    assert not load_config(home(tmp_path, bind=bind)).api.exposed


def test_an_insecure_tower_says_so_in_red(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(home(tmp_path, bind="0.0.0.0", insecure=True))
    assert config.api.exposed
    runtime = Runtime.open(config)
    try:
        page = create_app(runtime).test_client().get("/").get_data(as_text=True)
    finally:
        runtime.close()

    assert 'class="insecure"' in page and "every caller may do everything" in page
    main(["--config", str(config.path), "sites"])
    assert "\033[1;31mtower: the API serves plain HTTP to other hosts" in capsys.readouterr().out


def test_a_secure_tower_shows_no_warning(tmp_path: Path) -> None:
    runtime = Runtime.open(load_config(home(tmp_path)))
    try:
        page = create_app(runtime).test_client().get("/").get_data(as_text=True)
    finally:
        runtime.close()

    assert 'class="insecure"' not in page
