"""Request sheets: a CSV export of a spreadsheet, one production a row, each derived from a
template production.

Each row becomes a request document `{parent: TEMPLATE, name: ..., <its cells>}` and is
planned like a `tower submit` file. Every row is checked before anything is written, and
every problem names the sheet's line (as a spreadsheet counts them: the header is line 1)
and the column. An empty cell keeps the template's value.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

from sqlmodel import Session, col, select

from catalog.models import Dataset
from tower.config import TowerConfig
from tower.errors import NotFound, SpecError
from tower.management import productions
from tower.management.specs import ProductionSpec, Resolved

#: Names productions without a `name` column: the template's name and the data row number.
DEFAULT_PATTERN = "{template}-{row:04d}"
#: The widest field of a name pattern (a production's name has at most 200 characters).
MAX_WIDTH = 200
#: A name pattern's format: fill and alignment, sign, zero, width, precision, type; no
#: nested fields.
_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[+\- ]?0?(?P<width>[0-9]{0,3})(?:\.[0-9]{1,2})?"
                   r"[sdxXobfeg%]?")
#: Problems listed in one error; the rest are only counted.
MAX_PROBLEMS = 20
#: Delimiters a sheet may use; the header line's most frequent one wins (a comma if none).
DELIMITERS = ",;\t"
#: Column -> the production setting it sets (`events` is the spreadsheet's word).
SETTINGS = {name: name for name in (
    "name", "events_total", "events_per_job", "software", "walltime", "memory", "cores",
    "priority", "sites", "queue", "dataset", "description", "seed_base")} | {
    "events": "events_total"}
WHOLE_NUMBERS = {"events_total", "events_per_job", "cores", "priority", "seed_base"}
#: Settings written as a number or with a unit ("1h", "2GB"); the spec parses the units.
QUANTITIES = {"walltime", "memory"}
PARAMETER = "parameters."

_WHOLE = re.compile(r"[+-]?[0-9]+")
# no leading zeros, so an identifier such as "007" stays text
_INTEGER = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Sheet:
    """A sheet's header and its non-blank data rows, cells stripped."""

    source: str
    #: Column names as the header has them ("" for a column it does not name).
    columns: list[str]
    #: The request key each column sets: a setting, or "parameters.X".
    keys: list[str]
    #: (line number, cells) of every data row.
    rows: list[tuple[int, list[str]]]


@dataclass(frozen=True)
class Problem:
    line: int
    column: str | None
    message: str

    def describe(self, source: str) -> str:
        where = f"{source} line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Row:
    """One data row as a request document."""

    line: int
    document: dict[str, Any]
    #: request key ("events_total", "parameters.source") -> the column that set it
    columns: dict[str, str]

    @property
    def name(self) -> str:
        return str(self.document["name"])

    def column_for(self, field: str | None) -> str | None:
        """The column behind a spec error's field ("sites.0" is the sites column's)."""
        if field is None:
            return None
        return self.columns.get(field) or self.columns.get(field.split(".", 1)[0])


def read_file(path: Path) -> str:
    """A sheet file's text (UTF-8)."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); export the sheet as "
                        "CSV UTF-8") from None


def read(text: str, source: str) -> Sheet:
    """Parse CSV text: a header row, then data rows; blank lines are skipped."""
    text = text.removeprefix("\ufeff")  # the BOM spreadsheets write in "CSV UTF-8"
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    records = _records(text, max(DELIMITERS, key=header_line.count), source)
    if not records:
        raise SpecError(f"{source}: the sheet is empty", field="sheet")
    (_, header), *rows = records
    if not rows:
        raise SpecError(f"{source}: the sheet has a header but no rows", field="sheet")
    width = max(len(cells) for _, cells in records)
    columns = header + [""] * (width - len(header))
    keys = _keys(columns, source)
    for line, cells in rows:
        for position, cell in enumerate(cells):
            if cell and not columns[position]:
                raise SpecError(f"{source} line {line}, column {_letter(position)}: a value "
                                "under a column the header does not name", field="sheet")
    return Sheet(source, columns, keys, [(line, cells + [""] * (width - len(cells)))
                                         for line, cells in rows])


def _records(text: str, delimiter: str, source: str) -> list[tuple[int, list[str]]]:
    """(first line, stripped cells) of each non-blank record; a quoted cell may span lines."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []
    end = 0
    try:
        for cells in reader:
            line, end = end + 1, reader.line_num
            stripped = [cell.strip() for cell in cells]
            if any(stripped):  # a spreadsheet's empty row may come out as ",,,"
                records.append((line, stripped))
    except csv.Error as exc:
        raise SpecError(f"{source} line {reader.line_num}: {exc}", field="sheet") from exc
    return records


def _keys(columns: list[str], source: str) -> list[str]:
    """The request key each column sets; a name the sheet cannot use, or two columns
    setting the same key, is an error naming them."""
    keys: list[str] = []
    seen: dict[str, str] = {}
    for position, column in enumerate(columns):
        key = _key(column, position, source)
        if key and key in seen:
            twice = (f"column {column} appears twice" if seen[key] == column
                     else f"columns {seen[key]} and {column} both set {key}")
            raise SpecError(f"{source} line 1: {twice}", field=column)
        seen[key] = column
        keys.append(key)
    return keys


def _key(column: str, position: int, source: str) -> str:
    if not column:
        return ""
    if column in SETTINGS:
        return SETTINGS[column]
    if column in ProductionSpec.model_fields:
        raise SpecError(f"{source} line 1, column {column}: {column} cannot be set from a "
                        f"sheet; name the column {PARAMETER}{column} for a parameter",
                        field=column)
    name = column.removeprefix(PARAMETER)
    if not name.isidentifier():
        raise SpecError(f"{source} line 1, column {_letter(position)}: {column!r} is not a "
                        "setting or a parameter name (letters, digits, _); the first row "
                        "must name the columns", field=column)
    return PARAMETER + name


def _letter(position: int) -> str:
    """A column as spreadsheets letter it: A..Z, AA.."""
    letters = ""
    position += 1
    while position:
        position, rest = divmod(position - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def typed(cell: str) -> str | int | float | bool:
    """A parameter's value as typed: a whole number, a decimal number, true or false, or
    else the text itself."""
    if _INTEGER.fullmatch(cell):
        return int(cell)
    if _DECIMAL.fullmatch(cell):
        return float(cell)
    if cell.lower() in ("true", "false"):
        return cell.lower() == "true"
    return cell


def _value(key: str, cell: str) -> Any:
    """The value a cell gives `key`; ValueError says why it cannot."""
    if key.startswith(PARAMETER):
        return typed(cell)
    if key in WHOLE_NUMBERS:
        if not _WHOLE.fullmatch(cell):
            raise ValueError(f"{cell!r} is not a whole number")
        return int(cell)
    if key in QUANTITIES:
        return int(cell) if cell.isdigit() else cell
    if key == "sites":
        return list(dict.fromkeys(site for site in re.split(r"[\s|]+", cell) if site))
    return cell


def derive(sheet: Sheet, template: str, pattern: str = DEFAULT_PATTERN
             ) -> tuple[list[Row], list[Problem]]:
    """Each data row as a request document derived from `template`, and the problems of
    cells that cannot be read and of names that repeat. The name is the row's `name`
    cell, else `pattern` formatted with the template's name, the row number (from 1) and
    the row's cells by column."""
    _check_pattern(pattern, sheet)
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for number, (line, cells) in enumerate(sheet.rows, 1):
        row, found = _row(sheet, template, pattern, number, line, cells)
        problems += found
        if row is None:
            continue
        if row.name in first_line:
            problems.append(Problem(line, row.columns.get("name"), f"name {row.name!r} is "
                                    f"also line {first_line[row.name]}'s"))
            continue
        first_line[row.name] = line
        if not found:
            rows.append(row)
    return rows, problems


def _row(sheet: Sheet, template: str, pattern: str, number: int, line: int,
         cells: list[str]) -> tuple[Row | None, list[Problem]]:
    values: dict[str, Any] = {}
    columns: dict[str, str] = {}
    problems: list[Problem] = []
    for column, key, cell in zip(sheet.columns, sheet.keys, cells, strict=True):
        if not cell:
            continue  # the template's value
        try:
            values[key] = _value(key, cell)
        except ValueError as exc:
            problems.append(Problem(line, column, str(exc)))
        columns[key] = column
    if "name" not in values:
        variables = {"template": template, "row": number,
                     **{name: values.get(key, "") for name, key in _variables(sheet)}}
        try:
            values["name"] = pattern.format_map(variables)
        except (ValueError, TypeError) as exc:
            problems.append(Problem(line, None, f"name pattern {pattern!r}: {exc}"))
            return None, problems
    document: dict[str, Any] = {"parent": template}
    for key, value in values.items():
        if key.startswith(PARAMETER):
            document.setdefault("parameters", {})[key.removeprefix(PARAMETER)] = value
        else:
            document[key] = value
    return Row(line, document, columns), problems


def _variables(sheet: Sheet) -> Iterator[tuple[str, str]]:
    """(name in a name pattern, request key) of each column: its header, and a
    `parameters.X` column also as X."""
    for column, key in zip(sheet.columns, sheet.keys, strict=True):
        if column:
            yield column, key
            if column.startswith(PARAMETER):
                yield key.removeprefix(PARAMETER), key


def _check_pattern(pattern: str, sheet: Sheet) -> None:
    """A name pattern may use only the template, the row and the sheet's columns."""
    known = {"template", "row", *(name for name, _ in _variables(sheet))}
    where = f"{sheet.source}: name pattern {pattern!r}"
    try:
        fields = [(field, spec) for _, field, spec, _ in Formatter().parse(pattern)
                  if field is not None]
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}", field="name") from exc
    for field, spec in fields:
        # a name only: `{template.__init__}` or `{row[0]}` would reach into objects
        if field not in known or "." in field or "[" in field:
            raise SpecError(f"{where}: no column named {field!r} (known: "
                            f"{', '.join(sorted(known))})", field="name")
        # a production's name is short: `{row:>200000000}` must not build a huge string
        match = _SPEC.fullmatch(spec or "")
        if match is None or int(match["width"] or 0) > MAX_WIDTH:
            raise SpecError(f"{where}: {{{field}:{spec}}}: a format of at most "
                            f"{MAX_WIDTH} characters' width, such as 04d, is allowed",
                            field="name")


def plan(session: Session, text: str, source: str, template: str, pattern: str,
         config: TowerConfig) -> list[Resolved]:
    """Resolve and check every row of a sheet (from `source`, for messages) as a production
    derived from `template`; writes nothing. Raises one SpecError listing every bad row."""
    sheet = read(text, source)
    try:
        productions.get(session, template)
    except NotFound:
        raise SpecError(f"{source}: template: no production named {template!r} in the "
                        "tower", field="template") from None
    rows, problems = derive(sheet, template, pattern)
    plans = None if problems else _plan_at_once(session, rows, source, config)
    if plans is None:
        plans, found = _plan_each(session, rows, source, config)
        problems += found
    problems += _dataset_problems(session, rows, plans)
    if problems:
        raise _refusal(source, problems)
    return plans


def _plan_at_once(session: Session, rows: list[Row], source: str,
                  config: TowerConfig) -> list[Resolved] | None:
    try:
        return productions.plan_documents(session, [row.document for row in rows], source,
                                          config)
    except SpecError:
        return None  # it stops at the first bad row; planned row by row, all are named


def _plan_each(session: Session, rows: list[Row], source: str,
               config: TowerConfig) -> tuple[list[Resolved], list[Problem]]:
    plans, problems = [], []
    for row in rows:
        try:
            plans += productions.plan_documents(session, [row.document], source, config)
        except SpecError as error:
            problems.append(_reworded(row, error, source))
    return plans, problems


def _reworded(row: Row, error: SpecError, source: str) -> Problem:
    """A spec error of one row's document, on that row (and column, if one set the field)."""
    message = str(error).removeprefix(f"{source}: production {row.name}: ")
    column = row.column_for(error.field)
    if column is not None:
        message = message.removeprefix(f"{error.field}: ")
    elif error.field == "name":
        message += " (made by the name pattern)"
    return Problem(row.line, column, message)


def _dataset_problems(session: Session, rows: list[Row], plans: list[Resolved]
                      ) -> list[Problem]:
    """Rows whose output dataset another row, or an existing dataset, has: each production
    needs its own (a template that names one passes it to every row)."""
    by_name = {row.name: row for row in rows}
    names = [item.spec.dataset_name for item in plans]
    taken = set(session.exec(select(Dataset.name).where(col(Dataset.name).in_(names))).all())
    first_line: dict[str, int] = {}
    problems = []
    for item in plans:
        row, dataset = by_name[item.spec.name], item.spec.dataset_name
        column = row.columns.get("dataset")
        hint = "" if column else " (the template's; give each row a dataset column)"
        if dataset in taken:
            problems.append(Problem(row.line, column, f"dataset {dataset!r} exists "
                                    f"already{hint}"))
        elif dataset in first_line:
            problems.append(Problem(row.line, column, f"dataset {dataset!r} is also line "
                                    f"{first_line[dataset]}'s{hint}"))
        else:
            first_line[dataset] = row.line
    return problems


def _refusal(source: str, problems: list[Problem]) -> SpecError:
    """One error naming every problem (the first MAX_PROBLEMS of them), by line."""
    problems = sorted(problems, key=lambda problem: problem.line)
    field = problems[0].column
    if len(problems) == 1:
        return SpecError(problems[0].describe(source), field=field)
    lines = [problem.describe(source) for problem in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    bad_rows = len({problem.line for problem in problems})
    return SpecError(f"{source}: {len(problems)} problems in {bad_rows} rows; nothing was "
                     "created:\n  " + "\n  ".join(lines), field=field)
