"""Templates of commands, steering files and environments: `${name}` placeholders.

The tower renders them once at submission to check them (a dry run), the
pilot renders them for real with the values only the site knows. Both use
this module, so both agree on what a template means.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Template
from typing import Any


class TemplateProblem(ValueError):
    """A template uses an undefined variable or is malformed."""


def identifiers(text: str) -> list[str]:
    """The variable names `text` uses; raises TemplateProblem for a malformed `$`."""
    template = Template(text)
    if not template.is_valid():
        raise TemplateProblem(f"malformed placeholder in {text!r} (write $$ for a literal $)")
    return template.get_identifiers()


def render(text: str, variables: Mapping[str, Any]) -> str:
    """Fill `text`'s placeholders; raises TemplateProblem naming an undefined variable."""
    missing = [name for name in identifiers(text) if name not in variables]
    if missing:
        raise TemplateProblem(f"${{{missing[0]}}} is not defined")
    return Template(text).substitute({key: str(value) for key, value in variables.items()})
