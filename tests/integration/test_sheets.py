"""Request sheets against a real database: every row checked before any is written, every bad
row named, the rows' productions derived from the template; and through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func
from sqlmodel import Session, select

from tests.conftest import write_home
from tower.config import load_config
from tower.errors import SpecError
from tower.management import productions, sheets
from tower.model.db import transaction
from tower.model.models import Job, Production
from tower.runtime import Runtime

TEMPLATE: dict[str, Any] = {
    "name": "lz-bkg", "software": "toysim 1.0", "walltime": "5m",
    "command": ["echo", "${component}", "${source}", "${seed}"],
    "parameters": {"component": "cryostat", "source": "Rn222", "energy": 1.0},
    "events_total": 2, "events_per_job": 1,
}
COMPONENTS = ["PMT", "TPC", "cryostat", "RFR", "skin"]
SOURCES = ["Rn222", "Kr85", "Co60", "K40"]


def sheet(rows: int = 200, bad: dict[int, dict[str, str]] | None = None) -> str:
    """A sheet of `rows` tiny productions; `bad` replaces cells of some data rows (from 1)."""
    lines = ["component,source,events,software,sites"]
    for number in range(1, rows + 1):
        cells = {"component": COMPONENTS[number % 5], "source": SOURCES[number % 4],
                 "events": str(1 + number % 3), "software": "toysim 1.1", "sites": "local"}
        cells.update((bad or {}).get(number, {}))
        lines.append(",".join(cells.values()))
    return "\n".join(lines) + "\n"


def submit_template(runtime: Runtime, **changes: Any) -> None:
    with transaction(runtime.engine) as session:
        productions.submit(session, productions.plan_documents(
            session, [{**TEMPLATE, **changes}], "template.yaml", runtime.config), dry_run=False)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    opened = Runtime.open(load_config(write_home(tmp_path / "home", database_url)))
    yield opened
    opened.close()


def import_sheet(runtime: Runtime, text: str, pattern: str = sheets.DEFAULT_PATTERN,
                 dry_run: bool = False, template: str = "lz-bkg") -> dict[str, Any]:
    with transaction(runtime.engine) as session:
        return productions.submit(session, sheets.plan(
            session, text, "sheet.csv", template, pattern, runtime.config), dry_run)


def production_names(runtime: Runtime) -> list[str]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Production.name).order_by(Production.id)).all())


def test_every_bad_row_is_named_by_line_and_column_and_nothing_is_written(
        runtime: Runtime) -> None:
    submit_template(runtime)
    submit_template(runtime, name="lz-bkg-0150")  # a name row 150 would take
    text = sheet(bad={3: {"events": "ten"}, 40: {"events": "0"}, 77: {"software": ""},
                      200: {"sites": "local atlantis"}})
    with pytest.raises(SpecError) as caught:
        import_sheet(runtime, text)
    message = str(caught.value)
    assert message.splitlines() == [
        "sheet.csv: 4 problems in 4 rows; nothing was created:",
        "  sheet.csv line 4, column events: 'ten' is not a whole number",
        "  sheet.csv line 41, column events: Input should be greater than 0",
        "  sheet.csv line 151: name: a production of this name exists already "
        "(made by the name pattern)",
        "  sheet.csv line 201, column sites: unknown site 'atlantis' (known: local)"]
    assert caught.value.field == "events"
    assert production_names(runtime) == ["lz-bkg", "lz-bkg-0150"]


def test_past_the_cap_the_rest_of_the_problems_are_counted(runtime: Runtime) -> None:
    submit_template(runtime)
    text = sheet(rows=30, bad={number: {"events": "-1"} for number in range(1, 26)})
    with pytest.raises(SpecError) as caught:
        import_sheet(runtime, text)
    lines = str(caught.value).splitlines()
    assert lines[0] == "sheet.csv: 25 problems in 25 rows; nothing was created:"
    assert len(lines) == 1 + sheets.MAX_PROBLEMS + 1 and lines[-1] == "  ... and 5 more"
    assert production_names(runtime) == ["lz-bkg"]


def test_a_sheet_makes_one_production_a_row_derived_from_the_template(
        runtime: Runtime) -> None:
    submit_template(runtime)
    data = import_sheet(runtime, sheet())
    assert [row["production"] for row in data["productions"]] == \
        [f"lz-bkg-{number:04d}" for number in range(1, 201)]
    with Session(runtime.engine) as session:
        made = {p.name: p for p in session.exec(select(Production)).all()}
        assert len(made) == 201
        assert session.exec(select(func.count()).select_from(Job)).one() == \
            2 + sum(1 + number % 3 for number in range(1, 201))
    eighth = made["lz-bkg-0008"]
    assert eighth.parent == "lz-bkg" and eighth.events_total == 3
    assert eighth.spec["software"] == "toysim 1.1" and eighth.spec["sites"] == ["local"]
    assert eighth.spec["parameters"] == {"component": "RFR", "source": "Rn222", "energy": 1.0}
    assert eighth.origins["parameters.source"] == "lz-bkg-0008"
    assert eighth.origins["events_total"] == "lz-bkg-0008"
    assert eighth.origins["parameters.energy"] == "lz-bkg"
    assert eighth.origins["walltime"] == "lz-bkg" and eighth.spec["walltime"] == 300
    assert {p.parent for name, p in made.items() if name != "lz-bkg"} == {"lz-bkg"}


def test_a_dry_run_writes_nothing(runtime: Runtime) -> None:
    submit_template(runtime)
    data = import_sheet(runtime, sheet(rows=3), dry_run=True)
    assert data["dry_run"] and len(data["productions"]) == 3
    assert data["productions"][0]["first_job"]["command"][:3] == ["echo", "TPC", "Kr85"]
    assert production_names(runtime) == ["lz-bkg"]


def test_an_unknown_template_is_refused(runtime: Runtime) -> None:
    with pytest.raises(SpecError, match="sheet.csv: template: no production named 'lz-bkg'"):
        import_sheet(runtime, sheet(rows=2))
    assert production_names(runtime) == []


def test_a_template_naming_its_dataset_needs_a_dataset_column(runtime: Runtime) -> None:
    submit_template(runtime, dataset="lz/background")
    with pytest.raises(SpecError) as caught:
        import_sheet(runtime, sheet(rows=2))
    assert "sheet.csv line 2: dataset 'lz/background' exists already (the template's; " \
        "give each row a dataset column)" in str(caught.value)
    text = "component,dataset\nPMT,lz/pmt\nTPC,lz/pmt\n"
    with pytest.raises(SpecError, match="sheet.csv line 3, column dataset: dataset 'lz/pmt' "
                                        "is also line 2's"):
        import_sheet(runtime, text)
    assert production_names(runtime) == ["lz-bkg"]


def test_through_the_api_and_the_remote_cli_a_dry_run_writes_nothing(
        live_tower: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tower.cli import main as tower_main

    tower = live_tower()
    submit_template(tower.runtime)
    url = tower.runtime.config.api_url + "/api/v1/productions/import"
    body = {"text": sheet(rows=5), "source": "needs.csv", "template": "lz-bkg"}
    dry = requests.post(url, json={**body, "dry_run": True}, timeout=30)
    assert dry.status_code == 200, dry.text
    assert [row["production"] for row in dry.json()["productions"]] == \
        [f"lz-bkg-{number:04d}" for number in range(1, 6)]
    assert production_names(tower.runtime) == ["lz-bkg"]

    bad = requests.post(url, json={**body, "text": sheet(rows=5, bad={2: {"events": "x"}})},
                        timeout=30)
    assert bad.status_code == 400
    assert bad.json()["message"] == "needs.csv line 3, column events: 'x' is not a whole number"
    assert production_names(tower.runtime) == ["lz-bkg"]

    path = tmp_path / "needs.csv"
    path.write_text(sheet(rows=5))
    remote = ["--config", str(tmp_path / "nowhere.yaml"), "--url", tower.runtime.config.api_url]
    capsys.readouterr()
    assert tower_main([*remote, "import", str(path), "--template", "lz-bkg", "--name",
                       "{component}-{source}", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)["productions"]
    assert [row["production"] for row in made] == \
        ["TPC-Kr85", "cryostat-Co60", "RFR-K40", "skin-Rn222", "PMT-Kr85"]
    assert production_names(tower.runtime) == ["lz-bkg", *(row["production"] for row in made)]
