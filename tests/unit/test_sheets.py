"""Request sheets without a database: reading CSV, columns to request keys, names."""

from __future__ import annotations

from typing import Any

import pytest

from tower.errors import SpecError
from tower.management.sheets import Sheet, derive, read, typed


def documents(text: str, pattern: str = "{template}-{row:04d}") -> list[dict[str, Any]]:
    rows, problems = derive(read(text, "sheet.csv"), "lz", pattern)
    assert problems == []
    return [row.document for row in rows]


def problems_of(text: str, pattern: str = "{template}-{row:04d}") -> list[str]:
    _, problems = derive(read(text, "sheet.csv"), "lz", pattern)
    return [problem.describe("sheet.csv") for problem in problems]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_sniffed_from_the_header(delimiter: str) -> None:
    text = delimiter.join(["component", "source", "events"]) + "\n" + \
        delimiter.join(["PMT", "Rn222", "1000"]) + "\n"
    assert documents(text) == [{"parent": "lz", "name": "lz-0001", "events_total": 1000,
                                "parameters": {"component": "PMT", "source": "Rn222"}}]


def test_a_semicolon_sheet_keeps_commas_inside_cells() -> None:
    [document] = documents("component;description\nPMT;top, bottom\n")
    assert document["description"] == "top, bottom"


def test_a_bom_blank_lines_and_padding_are_ignored_and_lines_counted_as_a_spreadsheet_does(
        ) -> None:
    text = ("\ufeff component , events \r\n\r\n PMT , 10 \r\n,\r\n"
            '"cryo\nstat",ten\nTPC,20\n')
    sheet = read(text, "sheet.csv")
    assert sheet.columns == ["component", "events"]
    assert [line for line, _ in sheet.rows] == [3, 5, 7]
    assert sheet.rows[0][1] == ["PMT", "10"]
    assert problems_of(text) == ["sheet.csv line 5, column events: 'ten' is not a whole number"]


@pytest.mark.parametrize(("cell", "value"), [
    ("12", 12), ("-3", -3), ("0", 0), ("2.5", 2.5), ("1e-3", 0.001), (".5", 0.5),
    ("true", True), ("FALSE", False), ("007", "007"), ("Rn222", "Rn222"), ("1,5", "1,5"),
    ("nan", "nan"), ("yes", "yes"),
])
def test_parameters_keep_the_type_they_were_typed_as(cell: str, value: Any) -> None:
    assert typed(cell) == value and type(typed(cell)) is type(value)


def test_settings_are_parsed_and_other_columns_are_parameters() -> None:
    text = ("name,events,events_per_job,cores,priority,seed_base,walltime,memory,sites,"
            "queue,dataset,software,parameters.energy,flag\n"
            "pmt-rn,1000,100,2,-5,7,3600,2GB,local | nersc  slac|local,long,lz/bkg,"
            "geant4 11,2.5,true\n")
    [document] = documents(text)
    assert document == {
        "parent": "lz", "name": "pmt-rn", "events_total": 1000, "events_per_job": 100,
        "cores": 2, "priority": -5, "seed_base": 7, "walltime": 3600, "memory": "2GB",
        "sites": ["local", "nersc", "slac"], "queue": "long", "dataset": "lz/bkg",
        "software": "geant4 11", "parameters": {"energy": 2.5, "flag": True}}


def test_an_empty_cell_keeps_the_templates_value() -> None:
    [document] = documents("component,events,name\nPMT,,\n")
    assert document == {"parent": "lz", "name": "lz-0001", "parameters": {"component": "PMT"}}


def test_every_bad_cell_is_named_by_line_and_column() -> None:
    text = "component,events,cores\nPMT,ten,1\nTPC,10,1.5\nRFR,12,x\n"
    assert problems_of(text) == [
        "sheet.csv line 2, column events: 'ten' is not a whole number",
        "sheet.csv line 3, column cores: '1.5' is not a whole number",
        "sheet.csv line 4, column cores: 'x' is not a whole number"]


def test_the_name_pattern_uses_the_template_the_row_and_the_columns() -> None:
    text = "component,parameters.source,events\nPMT,Rn222,10\nTPC,Kr85,20\n"
    names = [d["name"] for d in documents(text, "{template}-{component}-{source}-{events:05d}")]
    assert names == ["lz-PMT-Rn222-00010", "lz-TPC-Kr85-00020"]


def test_a_name_pattern_naming_no_column_is_refused_naming_the_pattern() -> None:
    with pytest.raises(SpecError, match=r"name pattern '\{component\}-\{isotope\}': no "
                                        r"column named 'isotope'"):
        derive(read("component,source\nPMT,Rn222\n", "sheet.csv"), "lz",
               "{component}-{isotope}")


def test_a_malformed_name_pattern_is_refused() -> None:
    with pytest.raises(SpecError, match=r"name pattern '\{row': "):
        derive(read("component\nPMT\n", "sheet.csv"), "lz", "{row")


def test_a_format_a_rows_value_does_not_fit_names_that_row() -> None:
    assert problems_of("component,energy\nPMT,2\nTPC,high\n", "{component}-{energy:03d}") == [
        "sheet.csv line 3: name pattern '{component}-{energy:03d}': Unknown format code 'd' "
        "for object of type 'str'"]


def test_names_must_be_unique_within_the_sheet() -> None:
    text = "name,events\na,1\nb,2\na,3\n"
    assert problems_of(text) == ["sheet.csv line 4, column name: name 'a' is also line 2's"]
    made = "component\nPMT\nPMT\n"
    assert problems_of(made, "{component}") == ["sheet.csv line 3: name 'PMT' is also line 2's"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "sheet.csv: the sheet is empty"),
    ("\n \n,,\n", "sheet.csv: the sheet is empty"),
    ("component,events\n\n", "sheet.csv: the sheet has a header but no rows"),
    ("component,events,component\nPMT,1,TPC\n",
     "sheet.csv line 1: column component appears twice"),
    ("events,events_total\n1,2\n", "sheet.csv line 1: columns events and events_total both "
     "set events_total"),
    ("source,parameters.source\nRn222,Rn220\n", "sheet.csv line 1: columns source and "
     "parameters.source both set parameters.source"),
    ("PMT,1000\nTPC,2000\n", "sheet.csv line 1, column B: '1000' is not a setting or a "
     "parameter name"),
    ("component,command\nPMT,true\n", "sheet.csv line 1, column command: command cannot be "
     "set from a sheet; name the column parameters.command for a parameter"),
    ("component,events\nPMT,1,extra\n", "sheet.csv line 2, column C: a value under a column "
     "the header does not name"),
])
def test_a_malformed_sheet_is_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        read(text, "sheet.csv")
    assert str(caught.value).startswith(message)


def test_short_rows_and_trailing_empty_cells_are_fine() -> None:
    sheet = read("component,events,\nPMT\nTPC,5,\n", "sheet.csv")
    assert isinstance(sheet, Sheet) and sheet.rows[0][1] == ["PMT", "", ""]
    assert [d.get("events_total") for d in documents("component,events,\nPMT\nTPC,5,\n")] == \
        [None, 5]
