"""Finding files by their metadata, and exporting a dataset's file list.

A condition is `KEY=VALUE`, or `KEY>N`, `KEY>=N`, `KEY<N`, `KEY<=N` for the numeric
keys. Keys:

- `dataset`, and the numeric `size`, `events`, `job`, `attempt`: the file's own columns;
- `production`, `software`, `template_hash`, `seed`, `index`, `first_event`: the
  metadata the stager records with every file;
- `parameters.NAME`, or plain `NAME` for any other key: a parameter of the
  production (`parameters.a.b` reaches into nested values).

A metadata value matches as a string, or as the number or boolean it spells:
`energy=2.5` finds 2.5 and "2.5", `optical=true` finds true and "true". Lists and
objects are not compared. Conditions combine with AND.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import eq, ge, gt, le, lt
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, type_coerce
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col, select

from catalog.files import describe, get_dataset
from catalog.models import CatalogFile, Dataset, Replica, ReplicaState
from sites.errors import GridtowerError

FORMATS = ("json", "names")

#: Keys that are the file's own columns; all but `dataset` are integers.
COLUMNS = {"dataset": Dataset.name, "size": CatalogFile.size, "events": CatalogFile.events,
           "job": CatalogFile.job_id, "attempt": CatalogFile.attempt}
#: Keys of the stager's metadata itself; any other key names a production parameter.
META_KEYS = frozenset({"production", "software", "template_hash", "seed", "index",
                       "first_event"})
#: The largest whole number a condition compares: what SQLite's JSON numbers and the
#: 64-bit `size` hold; the other numeric columns are 32-bit (catalog imports nothing of
#: the tower's schema).
MAX_WHOLE = 2**63 - 1
_LARGEST = {"size": MAX_WHOLE, "events": 2**31 - 1, "job": 2**31 - 1, "attempt": 2**31 - 1}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {"=": eq, ">=": ge, "<=": le, ">": gt, "<": lt}

_CONDITION = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)(>=|<=|=|>|<)(.*)$", re.DOTALL)


class QueryError(GridtowerError):
    """The catalog query is invalid."""

    status = 400
    exit_code = 2


@dataclass(frozen=True)
class Condition:
    operator: str
    value: str
    #: One of COLUMNS, or None for metadata.
    column: str | None = None
    #: Where the value lives in the file's metadata.
    path: tuple[str, ...] = ()


def parse_condition(text: str) -> Condition:
    """`KEY=VALUE` (or a numeric comparison) as a Condition; QueryError names what is wrong."""
    match = _CONDITION.match(text.strip())
    if match is None:
        raise QueryError(f"condition {text!r}: write KEY=VALUE, or KEY>N, KEY>=N, KEY<N, "
                         "KEY<=N for size, events, job, attempt", field="condition")
    key, operator, value = match.groups()
    if not value:
        raise QueryError(f"condition {text!r}: no value after {operator!r}", field="condition")
    if key in COLUMNS:
        if key != "dataset":
            if not (re.fullmatch(r"-?[0-9]{1,19}", value)
                    and abs(int(value)) <= _LARGEST[key]):
                raise QueryError(f"condition {text!r}: {key} is compared with a whole number, "
                                 f"not {value!r} (at most {_LARGEST[key]} in size)",
                                 field="condition")
        elif operator != "=":
            raise QueryError(f"condition {text!r}: dataset is matched with =",
                             field="condition")
        return Condition(operator, value, column=key)
    if operator != "=":
        raise QueryError(f"condition {text!r}: {key} is matched with =; only size, events, "
                         "job and attempt compare with <, <=, >, >=", field="condition")
    head, _, rest = key.partition(".")
    if head == "parameters" and rest:
        path = ("parameters", *rest.split("."))
    elif key in META_KEYS:
        path = (key,)
    else:
        path = ("parameters", *key.split("."))
    return Condition(operator, value, path=path)


def parse_conditions(texts: list[str]) -> list[Condition]:
    if not texts:
        raise QueryError("give at least one condition KEY=VALUE", field="condition")
    return [parse_condition(text) for text in texts]


def find(session: Session, conditions: list[Condition], limit: int | None = None
         ) -> list[dict[str, Any]]:
    """Every file matching all `conditions` (the first `limit`), in LFN order, with its
    replicas."""
    postgres = session.get_bind().dialect.name == "postgresql"
    return describe(session, [_clause(condition, postgres) for condition in conditions], limit)


def _clause(condition: Condition, postgres: bool) -> ColumnElement[bool]:
    if condition.column == "dataset":
        return col(Dataset.name) == condition.value
    if condition.column is not None:
        return _COMPARE[condition.operator](col(COLUMNS[condition.column]), int(condition.value))
    candidates = [condition.value, *_literal(condition.value)]
    if postgres:
        # JSONB containment: served by the GIN index on meta
        meta = type_coerce(CatalogFile.meta, JSONB)
        return or_(*(meta.contains(_nested(condition.path, value)) for value in candidates))
    where = "$" + "".join(f'."{key}"' for key in condition.path)
    kind = func.json_type(CatalogFile.meta, where)
    found = func.json_extract(CatalogFile.meta, where)
    return or_(*(_sqlite_match(kind, found, value) for value in candidates))


def _literal(value: str) -> list[Any]:
    """The number or boolean `value` spells, if any."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return []
    if isinstance(parsed, bool) or (isinstance(parsed, float) and math.isfinite(parsed)):
        return [parsed]
    if isinstance(parsed, int) and abs(parsed) <= MAX_WHOLE:
        return [parsed]
    return []


def _nested(path: tuple[str, ...], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def _sqlite_match(kind: Any, found: Any, value: Any) -> ColumnElement[bool]:
    if isinstance(value, bool):
        return kind == ("true" if value else "false")  # type: ignore[no-any-return]
    if isinstance(value, str):
        return and_(kind == "text", found == value)
    return and_(kind.in_(("integer", "real")), found == value)


def export(session: Session, dataset: str, fmt: str = "json") -> list[Any]:
    """The file list of a dataset in LFN order: for `json`, rows of lfn, size, adler32,
    events and the good replicas; for `names`, the LFNs."""
    if fmt not in FORMATS:
        raise QueryError(f"format {fmt!r}: use one of {', '.join(FORMATS)}", field="format")
    owner = get_dataset(session, dataset)
    in_dataset = col(CatalogFile.dataset_id) == owner.id
    if fmt == "names":
        return list(session.exec(select(CatalogFile.lfn).where(in_dataset)
                                 .order_by(col(CatalogFile.lfn))).all())
    good: dict[int, list[dict[str, str]]] = {}
    for file_id, destination, path, url in session.exec(
            select(Replica.file_id, Replica.destination, Replica.path, Replica.url)
            .join(CatalogFile, col(CatalogFile.id) == Replica.file_id)
            .where(in_dataset, col(Replica.state) == ReplicaState.GOOD)
            .order_by(col(Replica.destination))).all():
        good.setdefault(file_id, []).append({"destination": destination, "path": path,
                                             "url": url})
    rows = session.execute(
        sa_select(col(CatalogFile.id), col(CatalogFile.lfn), col(CatalogFile.size),
                  col(CatalogFile.adler32), col(CatalogFile.events))
        .where(in_dataset).order_by(col(CatalogFile.lfn))).all()
    return [{"lfn": lfn, "size": size, "adler32": adler32, "events": events,
             "replicas": good.get(file_id, [])} for file_id, lfn, size, adler32, events in rows]
