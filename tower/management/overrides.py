"""`KEY=VALUE` settings given on the command line (`tower clone --set`, `tower approve
--set`): dotted keys reach into nested settings (`parameters.source=Co57`,
`trial.events=500`), and values are read as YAML scalars or lists, so numbers, booleans,
durations and `[a, b]` mean what they would in a request file."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from sites.schema import MAX_DEPTH, checked
from tower.errors import SpecError

_KEY = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-.]+)*$")


def parse(texts: list[str]) -> dict[str, Any]:
    """{dotted key: value} from `KEY=VALUE` texts; SpecError names a malformed one."""
    result: dict[str, Any] = {}
    for text in texts:
        key, sign, raw = text.partition("=")
        key = key.strip()
        if not sign or not _KEY.match(key) or key.count(".") >= MAX_DEPTH:
            raise SpecError(f"--set {text!r}: write KEY=VALUE, e.g. parameters.source=Co57",
                            field="set")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself
        except RecursionError:
            raise SpecError(f"--set {key}: nested deeper than {MAX_DEPTH}", field="set") from None
        result[key] = checked(value, "--set", SpecError, path=(key,))
    return result


def apply(document: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `document` with each dotted key set to its value."""
    changed = copy.deepcopy(document)
    for key, value in changes.items():
        *path, last = key.split(".")
        where = changed
        for part in path:
            if not isinstance(where.get(part), dict):
                where[part] = {}
            where = where[part]
        where[last] = value
    return changed
