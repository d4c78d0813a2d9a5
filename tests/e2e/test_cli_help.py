"""Every `tower` command's help answers, and neither help, a remote command nor a local
`tower status` loads SQLAlchemy (the cost that made `tower --help` take most of a second)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from tests.conftest import write_home
from tower.cli import cli

#: Runs `tower ARGS...` in-process in a fresh interpreter, then prints whether SQLAlchemy
#: (or the models) was ever imported, after the exit code.
PROBE = """
import json, sys
from tower.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(name for name in sys.modules
                  if name.split(".")[0] in ("sqlalchemy", "sqlmodel")
                  or name in ("tower.model.models", "flask"))}))
"""

pytestmark = pytest.mark.one_database


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every command under `command`, groups included."""
    found = [path]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += command_paths(sub, (*path, name))
    return found


PATHS = command_paths(cli)


def probe(*args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    last = result.stdout.strip().splitlines()[-1]
    return json.loads(last), result


def test_the_walk_finds_every_noun_group() -> None:
    assert {("ca", "list"), ("policy", "list"), ("catalog", "verify"), ("sites", "check"),
            ("jobs",), ("job",), ("completion",), ("notify", "test")} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "tower")
def test_every_help_answers_without_sqlalchemy(path: tuple[str, ...]) -> None:
    seen, result = probe(*path, "--help")
    assert seen["code"] == 0, result.stderr
    assert result.stdout.startswith("usage: tower")
    assert seen["loaded"] == [], f"`tower {' '.join(path)} --help` imported {seen['loaded']}"


@pytest.mark.parametrize("args", [("status",), ("jobs", "--json"), ("policy", "list"),
                                  ("catalog", "ls")])
def test_a_remote_command_that_cannot_connect_loads_no_sqlalchemy(args: tuple[str, ...]) -> None:
    seen, result = probe("--url", "http://127.0.0.1:1", *args)
    assert seen["code"] == 1 and "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert seen["loaded"] == [], f"remote `tower {' '.join(args)}` imported {seen['loaded']}"


def test_a_local_status_loads_no_sqlalchemy(tmp_path: Path) -> None:
    database = tmp_path / "tower.db"
    config = write_home(tmp_path / "home", f"sqlite:///{database}")
    request = tmp_path / "p.yaml"
    request.write_text("name: p\nsoftware: coreutils\ncommand: [\"true\"]\nwalltime: 1m\n"
                       "events_total: 3\nevents_per_job: 1\n")
    submitted = subprocess.run([sys.executable, "-m", "tower.cli", "--config", str(config),
                                "submit", str(request)], capture_output=True, text=True,
                               timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert submitted.returncode == 0, submitted.stderr
    for args in (("status",), ("status", "p", "--json"), ("requests",)):
        seen, result = probe("--config", str(config), *args)
        assert seen["code"] == 0, result.stderr
        assert seen["loaded"] == [], f"local `tower {' '.join(args)}` imported {seen['loaded']}"
    assert "p  active" in probe("--config", str(config), "status")[1].stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_the_shell_script(shell: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tower.cli", "completion", shell],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "_TOWER_COMPLETE" in result.stdout
    assert ("compdef" in result.stdout) == (shell == "zsh")


def test_completion_completes_commands_and_options() -> None:
    result = subprocess.run([sys.executable, "-m", "tower.cli"], capture_output=True,
                            text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "_TOWER_COMPLETE": "bash_complete",
                                 "COMP_WORDS": "tower catalog ", "COMP_CWORD": "2"})
    assert {"plain,ls", "plain,find", "plain,export", "plain,verify"} <= \
        set(result.stdout.split())
