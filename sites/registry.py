"""Backends resolved by name from one table per seam, with a "did you mean" for typos."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from sites.errors import ConfigError


def resolve(table: Mapping[str, str], name: str, kind: str) -> Any:
    """The object `table[name]` points at ("package.module:Attribute")."""
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {kind} {name!r} (known: {', '.join(sorted(table))}){hint}",
                          field=kind)
    module_name, _, attribute = table[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)
