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
                                     "sites", "pilots", "run", "serve"])
def test_every_command_has_help(command: str) -> None:
    result = subprocess.run([*TOWER, command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: tower" in result.stdout


def test_dry_run_shows_the_first_job_and_writes_nothing(home: Path) -> None:
    result = tower(home, "submit", "--dry-run", "--json", str(home.parent / "production.yaml"))
    assert result.returncode == 0, result.stderr
    production, reco = json.loads(result.stdout)["productions"]
    assert production["jobs"] == 24 and production["events"] == 48000
    assert production["first_job"]["command"][0] == "<python>"
    assert '"first_event": 0' in production["first_job"]["steering"]["steering.json"]
    # the chain's second step: its jobs come with the files, its first reads the first's
    assert (reco["jobs"], reco["split"]) == (0, "a job per file of radon-chain-demo's "
                                                "decays_*.csv")
    assert ('{"inputs": ["<input_dir>/decays_0.csv"], "output": "summary_0.json"}'
            in reco["first_job"]["steering"]["reco.json"])
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
    production, reco = productions_in(home)
    assert production["states"] == {"defined": 24} and production["events_done"] == 0
    assert reco["name"] == "radon-chain-reco" and reco["jobs"] == 0
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
    assert len(productions_in(home)) == 2


def test_unknown_objects_exit_3(home: Path) -> None:
    assert tower(home, "status", "nothing-here").returncode == 3
    assert tower(home, "job", "12345").returncode == 3
    assert tower(home, "catalog", "ls", "no-dataset").returncode == 3


def test_a_config_error_exits_2_and_names_the_key(tmp_path: Path) -> None:
    config = write_home(tmp_path, "sqlite:///x.db", loops={"interval": "whenever"})
    result = tower(config, "status")
    assert result.returncode == 2 and "loops.interval" in result.stderr


@pytest.mark.rabbitmq
def test_sites_shows_the_broker_depth_beside_the_backlog_and_never_the_password(
        tmp_path: Path, amqp_url: str) -> None:
    import pika

    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}", broker=amqp_url)
    password = amqp_url.split("@")[0].rsplit(":", 1)[1]
    request = tmp_path / "p.yaml"
    request.write_text(yaml.safe_dump({"name": "p", "software": "coreutils", "command": ["true"],
                                       "walltime": "1m", "events_total": 5,
                                       "events_per_job": 1}))
    assert tower(config, "submit", str(request)).returncode == 0
    first = tower(config, "-v", "sites", "--json")
    assert first.returncode == 0, first.stderr
    [row] = json.loads(first.stdout)["sites"]
    assert (row["site"], row["queue"], row["waiting"], row["backlog"], row["broker"]) == \
        ("local", "default", 5, 0, 0)
    assert row["bound"] == 2  # one pilot's slots while none runs

    # a message in the site's queue (the first call declared it) shows in the broker column
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        connection.channel().basic_publish("", "local.default", b"{}")
    second = tower(config, "-v", "sites")
    assert second.returncode == 0, second.stderr
    [line] = [text for text in second.stdout.splitlines() if text.startswith("local")]
    assert line.split()[-3:] == ["5", "0/2", "1"]
    for result in (first, second):
        assert password not in result.stdout + result.stderr


def test_sites_with_an_unreachable_broker_exits_1_without_the_password(tmp_path: Path) -> None:
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}",
                        broker="amqp://user:hunter2@127.0.0.1:1/v")
    result = tower(config, "-v", "sites")
    assert result.returncode == 1
    assert "broker unreachable" in result.stderr and "user:***@127.0.0.1:1" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    [line] = [text for text in result.stdout.splitlines() if text.startswith("local")]
    assert line.split()[-1] == "?"
