"""`${spec_dir}` names files at the tower (issue 18 item 9): a request whose template names
a file there that does not exist is refused at submission, through the CLI and the API,
saying how a submitter elsewhere ships its files; a child filed from another directory
keeps the directory of the parent whose files its templates name."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlmodel import Session

from tests.integration.conftest import EXAMPLES, LiveTower
from tower.cli import main as tower_main
from tower.management import productions

#: A request whose command runs a script beside the request file.
REQUEST = {"name": "beside", "software": "toysim 1.0", "events_total": 400,
           "events_per_job": 200, "walltime": "5m", "outputs": ["decays_*.csv"],
           "command": ["${python}", "${spec_dir}/toysim.py", "--steering", "steering.json",
                       "--output-dir", "${output_dir}"],
           "steering": {"steering.json": '{"seed": ${seed}, "first_event": ${first_event}, '
                                         '"events": ${events}, "output": "decays_${index}.csv"}'}}


def cli(tower: LiveTower, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = tower_main(["--config", str(tower.home / "tower.yaml"), *argv])
    return code, capsys.readouterr().err


def write(directory: Path, request: dict[str, Any], script: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if script:
        shutil.copy(EXAMPLES / "toysim.py", directory / "toysim.py")
    path = directory / f"{request['name']}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def spec_dir_of(tower: LiveTower, name: str) -> str:
    with Session(tower.runtime.engine) as session:
        return str(productions.get(session, name).spec["spec_dir"])


def test_the_cli_refuses_a_script_that_is_not_beside_the_request(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tower = live_tower()
    code, err = cli(tower, capsys, "submit", str(write(tmp_path / "a", REQUEST, script=False)))
    assert code == 2, err
    assert "command[1]" in err and str(tmp_path / "a" / "toysim.py") in err
    assert "does not exist at the tower" in err


def test_a_child_filed_elsewhere_keeps_its_parents_directory(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Given a parent filed beside its script
    tower = live_tower()
    code, err = cli(tower, capsys, "submit", str(write(tmp_path / "a", REQUEST, script=True)))
    assert code == 0, err
    # When a child that only changes the events is filed from another directory
    child = {"name": "child", "parent": "beside", "events_total": 800}
    code, err = cli(tower, capsys, "submit", str(write(tmp_path / "b", child, script=False)))
    # Then its jobs run the parent's script
    assert code == 0, err
    assert spec_dir_of(tower, "child") == str(tmp_path / "a")
    # and a child that names ${spec_dir} itself, where its file is missing, is refused
    own = {**child, "name": "own", "command": ["${python}", "${spec_dir}/gen.py"]}
    code, err = cli(tower, capsys, "submit", str(write(tmp_path / "b", own, script=False)))
    assert code == 2 and "command[1]" in err and str(tmp_path / "b" / "gen.py") in err


def test_the_api_refuses_a_spec_dir_that_is_not_at_the_tower_and_says_how_to_ship(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower()
    url = tower.runtime.config.api.url + "/api/v1/productions"
    for spec_dir in ("", "/home/someone/on/a/laptop"):
        answer = requests.post(url, json={"text": yaml.safe_dump(REQUEST),
                                          "spec_dir": spec_dir}, timeout=30)
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["field"] == "command[1]", error
        assert "${spec_dir}" in error["message"] and "absolute path" in error["message"], error
    # beside its script at the tower, the same request is taken
    write(tmp_path / "a", REQUEST, script=True)
    answer = requests.post(url, json={"text": yaml.safe_dump(REQUEST),
                                      "spec_dir": str(tmp_path / "a")}, timeout=30)
    assert answer.status_code == 200, answer.text
