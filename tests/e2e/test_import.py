"""`tower import SHEET --template PRODUCTION` as a subprocess: a bad row creates nothing and is
named by line and column; a good sheet makes one production a row, derived from the template."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session, create_engine, select

from tests.conftest import write_home
from tests.e2e.test_cli import TOWER, productions_in, tower
from tower.model.models import Production

COMPONENTS = ["PMT", "TPC", "cryostat", "RFR", "skin"]
SOURCES = ["Rn222", "Kr85", "Co60", "K40"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A tower on SQLite holding the template production `lz-bkg` (two one-event jobs)."""
    config = write_home(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tower.db'}")
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump({
        "name": "lz-bkg", "software": "toysim 1.0", "walltime": "5m",
        "command": ["echo", "${component}", "${source}", "${seed}"],
        "parameters": {"component": "cryostat", "source": "Rn222", "energy": 1.0},
        "events_total": 2, "events_per_job": 1}))
    submitted = tower(config, "submit", str(template))
    assert submitted.returncode == 0, submitted.stderr
    return config


def write_sheet(path: Path, events: dict[int, str] | None = None, rows: int = 200) -> Path:
    """`rows` tiny productions, ';'-separated with a BOM as spreadsheets export; `events`
    replaces the events cell of some data rows (numbered from 1)."""
    lines = ["component;source;events;software"]
    for number in range(1, rows + 1):
        cell = (events or {}).get(number, str(1 + number % 3))
        lines.append(f"{COMPONENTS[number % 5]};{SOURCES[number % 4]};{cell};toysim 1.1")
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_bad_row_in_200_creates_nothing_and_the_fixed_sheet_creates_200(
        home: Path, tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "needs.csv", events={57: "ten"})
    refused = tower(home, "import", str(sheet), "--template", "lz-bkg")
    assert refused.returncode == 2
    assert refused.stderr.strip() == \
        f"tower: {sheet} line 58, column events: 'ten' is not a whole number"
    assert [row["name"] for row in productions_in(home)] == ["lz-bkg"]

    write_sheet(sheet)
    created = tower(home, "import", str(sheet), "--template", "lz-bkg")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert lines[0] == "created production lz-bkg-0001: 2 jobs, 2 events -> dataset " \
        "lz-bkg-0001 (no outputs)"
    jobs = sum(1 + number % 3 for number in range(1, 201))  # one event a job
    assert len(lines) == 201 and lines[-1] == (
        f"created 200 productions from {sheet}, derived from lz-bkg: {jobs} jobs, {jobs} events")

    made = {row["name"]: row for row in productions_in(home)}
    assert len(made) == 201
    for number in (1, 57, 200):
        row = made[f"lz-bkg-{number:04d}"]
        assert row["events_total"] == 1 + number % 3 and row["jobs"] == 1 + number % 3
    engine = create_engine(f"sqlite:///{home.parent / 'tower.db'}")
    with Session(engine) as session:
        stored = session.exec(select(Production).where(
            Production.name == "lz-bkg-0057")).one()
    engine.dispose()
    assert stored.parent == "lz-bkg" and stored.spec["software"] == "toysim 1.1"
    assert stored.spec["parameters"] == {"component": "cryostat", "source": "Kr85",
                                      "energy": 1.0}
    assert stored.origins["parameters.component"] == "lz-bkg-0057"
    assert stored.origins["parameters.energy"] == "lz-bkg"
    assert stored.origins["command"] == "lz-bkg"


def test_a_dry_run_shows_what_would_be_made_and_writes_nothing(home: Path,
                                                                tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "needs.csv", rows=3)
    shown = tower(home, "import", str(sheet), "--template", "lz-bkg", "--dry-run", "--json",
                  "--name", "{component}-{source}")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["dry_run"] is True
    assert [row["production"] for row in data["productions"]] == \
        ["TPC-Kr85", "cryostat-Co60", "RFR-K40"]
    assert data["productions"][0]["first_job"]["command"][:3] == ["echo", "TPC", "Kr85"]
    text = tower(home, "import", str(sheet), "--template", "lz-bkg", "--dry-run").stdout
    assert text.splitlines()[-1] == \
        f"would create 3 productions from {sheet}, derived from lz-bkg: 6 jobs, 6 events"
    assert [row["name"] for row in productions_in(home)] == ["lz-bkg"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--template", "lz-bkg", "--name", "{component}-{isotope}"],
     "name pattern '{component}-{isotope}': no column named 'isotope'"),
    (["--template", "lz-signal"], "template: no production named 'lz-signal'"),
])
def test_a_bad_pattern_or_template_exits_2_naming_it(home: Path, tmp_path: Path,
                                                      arguments: list[str],
                                                      message: str) -> None:
    sheet = write_sheet(tmp_path / "needs.csv", rows=2)
    result = tower(home, "import", str(sheet), *arguments, "--json")
    assert result.returncode == 2 and message in result.stderr
    assert message in json.loads(result.stdout)["message"]
    assert [row["name"] for row in productions_in(home)] == ["lz-bkg"]


def test_an_unreadable_sheet_exits_2(home: Path, tmp_path: Path) -> None:
    missing = tower(home, "import", str(tmp_path / "nothing.csv"), "--template", "lz-bkg")
    assert missing.returncode == 2 and "nothing.csv: cannot read" in missing.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes("component\nCâble\n".encode("latin-1"))
    result = tower(home, "import", str(latin), "--template", "lz-bkg")
    assert result.returncode == 2 and "not UTF-8" in result.stderr


def test_import_has_help() -> None:
    result = subprocess.run([*TOWER, "import", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--template PRODUCTION" in result.stdout
