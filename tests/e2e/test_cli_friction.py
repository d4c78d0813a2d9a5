"""What a newcomer tripped over in `tower`, each through the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import POSTGRES_ADMIN, write_home

TOWER = [sys.executable, "-m", "tower.cli"]

pytestmark = pytest.mark.one_database


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOWER_")}


def tower(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOWER, "--config", str(config), *args], capture_output=True,
                          text=True, env=environment(), timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'tower.db'}")


def request(directory: Path, name: str, events: int = 3) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "software": "coreutils", "command": ["true"],
                                    "walltime": "1m", "events_total": events,
                                    "events_per_job": 1}))
    return path


def submitted(home: Path, *names: str) -> Path:
    for name in names:
        result = tower(home, "submit", str(request(home.parent, name)))
        assert result.returncode == 0, result.stderr
    return home


def test_a_closed_pipe_ends_quietly(home: Path) -> None:
    submitted(home, "p")
    for args in (["status"], ["jobs"], ["--help"]):
        # the reader is gone before the tower writes: its first line meets a closed pipe
        process = subprocess.Popen([*TOWER, "--config", str(home), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=environment())
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        error = process.stderr.read().decode()
        assert process.wait(timeout=60) == 1, error
        assert error == "", args


def one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    for word in words:
        assert word in line, line


def test_a_database_of_another_schema_is_one_line_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "other.db"
    with sqlite3.connect(database) as connection:  # a `job` table of something else
        connection.execute("CREATE TABLE job (id INTEGER PRIMARY KEY, title TEXT)")
    config = write_home(tmp_path / "home", f"sqlite:///{database}")
    # `tower status` reads without SQLAlchemy, through the driver: its errors read alike
    one_line(tower(config, "status"), 1, "tower: database", str(database),
             "no such table: production", "gridtower database")
    result = tower(config, "jobs")
    one_line(result, 1, "tower: database", str(database), "no such column",
             "gridtower database")
    verbose = tower(config, "-v", "jobs")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    checked = tower(config, "db", "check")
    assert checked.returncode == 1 and "not this tower's schema" in checked.stdout
    assert "missing column job.production_id" in checked.stdout


def test_a_file_that_is_no_database_is_one_line_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    database.write_text("these are my notes, not a database\n" * 100)
    config = write_home(tmp_path / "home", f"sqlite:///{database}")
    one_line(tower(config, "status"), 1, str(database), "not a database")


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    config = write_home(tmp_path / "home",
                        "postgresql://tower:hunter2@127.0.0.1:1/gridtower")
    result = tower(config, "status")
    one_line(result, 1, "tower: database", "tower:***@127.0.0.1:1/gridtower")
    assert "hunter2" not in result.stdout + result.stderr


def test_a_missing_database_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = POSTGRES_ADMIN.rsplit("/", 1)[0] + "/no_such_gridtower_database"
    result = tower(write_home(tmp_path / "home", missing), "status")
    one_line(result, 1, "no_such_gridtower_database", "does not exist")


def test_status_of_a_database_not_made_yet_reads_empty_and_makes_none(tmp_path: Path) -> None:
    database = tmp_path / "tower.db"
    config = write_home(tmp_path / "home", f"sqlite:///{database}")
    result = tower(config, "status")
    assert (result.returncode, result.stdout, result.stderr) == (0, "no productions\n", "")
    one_line(tower(config, "status", "p"), 3, "no production named 'p'")
    assert not database.exists()


def test_a_config_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "tower.yaml").mkdir()  # there, but a directory
    one_line(tower(tmp_path / "tower.yaml", "status"), 2, str(tmp_path / "tower.yaml"),
             "cannot read")


def test_hold_and_release_of_a_job_that_is_not_there_or_cannot_move_exit_non_zero(
        home: Path) -> None:
    submitted(home, "p")
    missing = tower(home, "hold", "9999")
    one_line(missing, 3, "no job 9999")
    unheld = tower(home, "release", "1")
    one_line(unheld, 4, "job 1 is defined")
    assert tower(home, "hold", "1").returncode == 0
    again = tower(home, "hold", "1", "2")
    one_line(again, 4, "job 1 is held")
    # nothing moved: job 2 was named beside a job that cannot be held
    jobs = json.loads(tower(home, "jobs", "--json").stdout)["jobs"]
    assert {row["id"]: row["state"] for row in jobs}[2] == "defined"
    assert tower(home, "cancel", "p").returncode == 0
    one_line(tower(home, "cancel", "p"), 4, "production p is cancelled")
    one_line(tower(home, "cancel", "nothing"), 3, "nothing")


def test_job_shows_its_moves(home: Path) -> None:
    submitted(home, "p")
    assert tower(home, "hold", "1").returncode == 0
    assert tower(home, "release", "1").returncode == 0
    shown = tower(home, "job", "1")
    assert shown.returncode == 0, shown.stderr
    history = shown.stdout.split("history:\n", 1)[1].splitlines()
    assert [line.split()[1:4] for line in history] == [["defined", "->", "held"],
                                                       ["held", "->", "defined"]]
    as_json = json.loads(tower(home, "job", "1", "--json").stdout)
    assert [(move["from"], move["to"]) for move in as_json["history"]] == \
        [("defined", "held"), ("held", "defined")]


def test_listings_sort_names_naturally_and_align_their_columns(home: Path) -> None:
    submitted(home, "decays_10", "decays_2", "a-much-longer-production-name-than-thirty")
    text = tower(home, "status").stdout
    names = [line.split()[0] for line in text.splitlines() if not line.startswith(" ")]
    assert names == ["a-much-longer-production-name-than-thirty", "decays_2", "decays_10"]
    bars = {line.index("[") for line in text.splitlines() if not line.startswith(" ")}
    assert len(bars) == 1, text
    listed = tower(home, "policy", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["quick", "standard", "strict"]
    descriptions = {len(re.match(r"\S+\s+(\(default\)\s+)?", line).group(0))  # type: ignore[union-attr]
                    for line in listed}
    assert len(descriptions) == 1, listed


def test_a_production_whose_jobs_all_ended_reads_finished_everywhere(home: Path,
                                                                     served: str) -> None:
    from tower.model import tally
    from tower.model.db import make_engine, transaction

    submitted(home, "p")
    # every job ends (failed), and the tally counts them so: the production stays active
    with sqlite3.connect(home.parent.parent / "tower.db") as connection:
        connection.execute("UPDATE job SET state = 'failed'")
    engine = make_engine(f"sqlite:///{home.parent.parent / 'tower.db'}")
    with transaction(engine) as session:
        tally.rebuild(session)
    engine.dispose()
    [row] = json.loads(tower(home, "status", "--json").stdout)["productions"]
    assert (row["state"], row["phase"]) == ("active", "finished")
    [line] = [text for text in tower(home, "status").stdout.splitlines()
              if text.startswith("p ")]
    assert line.split()[1] == "finished"
    # the API's answer, through the remote CLI; the pages and notifications use
    # tower.management.progress.phase as the summaries do
    remote = subprocess.run([*TOWER, "--url", served, "status", "p", "--json"],
                            capture_output=True, text=True, env=environment(), timeout=60)
    [row] = json.loads(remote.stdout)["productions"]
    assert (row["state"], row["phase"]) == ("active", "finished")


@pytest.fixture
def served(home: Path) -> Iterator[str]:
    """A tower serving its API over loopback, for the remote CLI."""
    process = subprocess.Popen([*TOWER, "--config", str(home), "serve"],
                               stderr=subprocess.PIPE, text=True, env=environment())
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "API at" in line:
                yield line.split("API at ", 1)[1].strip()
                break
        else:
            raise AssertionError("tower serve ended without serving")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_remote_cli_covers_catalog_and_policy(home: Path, served: str) -> None:
    def both(*args: str) -> tuple[object, object]:
        here = tower(home, *args, "--json")
        there = subprocess.run([*TOWER, "--url", served, *args, "--json"], capture_output=True,
                               text=True, env=environment(), timeout=60)
        assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
        return json.loads(here.stdout), json.loads(there.stdout)

    for args in (("policy", "list"), ("policy", "show", "strict"), ("catalog", "ls")):
        here, there = both(*args)
        assert here == there, args
    missing = subprocess.run([*TOWER, "--url", served, "policy", "show", "nothing"],
                             capture_output=True, text=True, env=environment(), timeout=60)
    one_line(missing, 3, "nothing")
