"""A running `tower run` (a real process) reloads sites.yaml on SIGHUP and on `tower reload`:
a good file is put in force while a production runs, and the production completes; a bad
one is refused, logged naming the file and the key, and the old configuration stays. Its
log is JSON lines, as tower.yaml's `logging` section asks, and lines about a job carry
the production, the job and the attempt. Under systemd (NOTIFY_SOCKET) it says when it is
ready and feeds the watchdog while its loops cycle."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import write_home
from tests.e2e.test_cli import TOWER, tower
from tests.integration.conftest import toy_production

LOGGING = {"level": "INFO", "format": "json", "file": {"path": "logs/tower.log"}}


class Running:
    """`tower run` in a process of its own, its API on a free port."""

    def __init__(self, config: Path, *args: str, **variables: str) -> None:
        self.config = config
        self.stderr = config.parent / "stderr.txt"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_")}
        environment.update(variables)
        with open(self.stderr, "wb") as sink:
            self.process = subprocess.Popen([*TOWER, "--config", str(config), "run", *args],
                                            stdout=subprocess.DEVNULL, stderr=sink,
                                            env=environment)
        self.url = self._url()

    def _url(self) -> str:
        def said() -> str | None:
            found = re.search(r"API at (\S+)", self.stderr.read_text())
            return found.group(1) if found else None

        wait_for(lambda: said() is not None or self.process.poll() is not None)
        url = said()
        assert url, self.stderr.read_text()
        return url

    def log(self) -> list[dict[str, Any]]:
        path = self.config.parent / "logs" / "tower.log"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def logged(self, pattern: str) -> list[dict[str, Any]]:
        return [line for line in self.log() if re.search(pattern, line["message"])]

    def sites(self) -> set[str]:
        answer = requests.get(self.url + "/api/v1/sites", timeout=10)
        return {row["site"] for row in answer.json()["sites"]}

    def hang_up(self) -> None:
        self.process.send_signal(signal.SIGHUP)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout}s"
        time.sleep(0.2)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(config: Path, *args: str, **variables: str) -> Running:
        started.append(Running(config, *args, **variables))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.terminate()
            process.process.wait(timeout=30)


def write_sites(config: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = config.parent / "sites.yaml"
    sites = yaml.safe_load(path.read_text())
    change(sites["sites"])
    path.write_text(yaml.safe_dump(sites))


def second_site(config: Path) -> Callable[[dict[str, Any]], None]:
    home = config.parent

    def add(sites: dict[str, Any]) -> None:
        sites["second"] = {**sites["local"], "scratch": str(home / "second" / "scratch"),
                           "storage": str(home / "second" / "storage")}
    return add


def bad_limit(sites: dict[str, Any]) -> None:
    sites["local"]["limits"]["max_running"] = -1


def test_sighup_reloads_a_good_sites_yaml_and_refuses_a_bad_one_while_a_production_runs(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tower.db'}",
                        logging=LOGGING)
    spec = toy_production(tmp_path, jobs=4, events=100, sleep=0.02)  # 2 s a job
    assert tower(config, "submit", str(spec)).returncode == 0
    tower_run = running(config, "--until-done", "--timeout", "120")
    wait_for(lambda: bool(tower_run.logged(r"^published ")))  # jobs are at the site

    write_sites(config, second_site(config))
    tower_run.hang_up()
    wait_for(lambda: bool(tower_run.logged(r"^reload: ")))
    assert tower_run.logged(r"^reload: site added: second$")
    assert tower_run.sites() == {"local", "second"}

    write_sites(config, bad_limit)
    tower_run.hang_up()
    wait_for(lambda: bool(tower_run.logged(r"^reload refused")))
    refused = tower_run.logged(r"^reload refused")[0]
    assert refused["level"] == "ERROR"
    assert str(config.parent / "sites.yaml") in refused["message"]
    assert "sites.local.limits.max_running" in refused["message"]
    assert tower_run.sites() == {"local", "second"}  # the configuration in force stays

    assert tower_run.process.wait(timeout=120) == 0, tower_run.stderr.read_text()
    write_sites(config, lambda sites: sites["local"]["limits"].update(max_running=2))
    status = json.loads(tower(config, "status", "--json").stdout)["productions"][0]
    assert status["states"] == {"done": 4}
    # the stager's lines about each job carry its production, job and attempt as keys
    staged = tower_run.logged(r"^staged ")
    assert len(staged) == 4
    assert {(line["production"], line["attempt"]) for line in staged} == {("toy", 1)}
    assert sorted(line["job"] for line in staged) == list(range(1, 5))
    # both reloads came while the production ran
    assert refused["time"] < max(line["time"] for line in staged)


def test_tower_reload_checks_the_files_first_then_asks_the_running_tower(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tower.db'}",
                        logging=LOGGING)
    tower_run = running(config)
    wait_for(lambda: tower_run.sites() == {"local"})

    write_sites(config, bad_limit)
    refused = tower(config, "reload")
    assert refused.returncode == 2
    assert "sites.yaml" in refused.stderr and "sites.local.limits.max_running" in refused.stderr
    time.sleep(2)  # the tower would have reloaded within a second had it been asked
    assert not tower_run.logged(r"^reload")

    write_sites(config, lambda sites: sites["local"]["limits"].update(max_running=1))
    write_sites(config, second_site(config))
    asked = tower(config, "reload", "--json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["sites"] == ["local", "second"]
    wait_for(lambda: bool(tower_run.logged(r"^reload: ")))
    assert tower_run.logged(r"^reload: site added: second; site changed: local \(limits\)$")
    assert tower_run.sites() == {"local", "second"}


def test_under_systemd_it_says_ready_and_feeds_the_watchdog_while_its_loops_cycle(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tower.db'}")
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(30)
        running(config, NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000")
        said = [systemd.recv(100).decode() for _ in range(3)]
    assert said == ["READY=1", "WATCHDOG=1", "WATCHDOG=1"]
