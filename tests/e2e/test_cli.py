"""The `tower` command as a subprocess: exit codes, JSON output, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_home

TOWER = [sys.executable, "-m", "tower.cli"]


def tower(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_")}
    return subprocess.run([*TOWER, "--config", str(config), *args], capture_output=True,
                          text=True, env=environment, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    from tower.home import init

    return init(tmp_path / "home")[0]


def productions_in(config: Path) -> list[dict[str, object]]:
    result = tower(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["productions"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", ["init", "submit", "status", "jobs", "job", "catalog",
                                     "run", "serve"])
def test_every_command_has_help(command: str) -> None:
    result = subprocess.run([*TOWER, command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: tower" in result.stdout


def test_dry_run_shows_the_first_job_and_writes_nothing(home: Path) -> None:
    result = tower(home, "submit", "--dry-run", "--json", str(home.parent / "production.yaml"))
    assert result.returncode == 0, result.stderr
    [production] = json.loads(result.stdout)["productions"]
    assert production["jobs"] == 24 and production["events"] == 48000
    assert production["first_job"]["command"][0] == "<python>"
    assert '"first_event": 0' in production["first_job"]["steering"]["steering.json"]
    assert productions_in(home) == []


def test_a_bad_request_exits_2_names_file_and_field_and_writes_nothing(home: Path) -> None:
    good = home.parent / "production.yaml"
    documents = list(yaml.safe_load_all(good.read_text()))
    documents[1]["sites"] = ["atlantis"]
    bad = home.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(documents))
    result = tower(home, "submit", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "sites: unknown site 'atlantis'" in result.stderr
    assert productions_in(home) == []


def test_submit_then_status_jobs_and_pagination(home: Path) -> None:
    assert tower(home, "submit", str(home.parent / "production.yaml")).returncode == 0
    [production] = productions_in(home)
    assert production["states"] == {"defined": 24} and production["events_done"] == 0
    first = json.loads(tower(home, "jobs", "--json", "--limit", "10").stdout)
    second = json.loads(tower(home, "jobs", "--json", "--limit", "10", "--after",
                              str(first["next_after"])).stdout)
    ids = [job["id"] for job in first["jobs"] + second["jobs"]]
    assert ids == sorted(set(ids)) and len(ids) == 20
    text = tower(home, "status").stdout
    assert "radon-chain-demo" in text and "0/48000 events" in text


def test_submitting_the_same_name_twice_is_refused(home: Path) -> None:
    path = str(home.parent / "production.yaml")
    assert tower(home, "submit", path).returncode == 0
    again = tower(home, "submit", path)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert len(productions_in(home)) == 1


def test_unknown_objects_exit_3(home: Path) -> None:
    assert tower(home, "status", "nothing-here").returncode == 3
    assert tower(home, "job", "12345").returncode == 3
    assert tower(home, "catalog", "ls", "no-dataset").returncode == 3


def test_a_config_error_exits_2_and_names_the_key(tmp_path: Path) -> None:
    config = write_home(tmp_path, "sqlite:///x.db", loops={"interval": "whenever"})
    result = tower(config, "status")
    assert result.returncode == 2 and "loops.interval" in result.stderr
