"""What a request may hold, checked at the edge before any view runs: path and query
strings without NUL and of bounded length, ids in paths that fit a 64-bit column, and one
parser for whole-number query parameters. Bodies are checked by their models
(`sites.schema.Strict`), after `sites.schema.json_document` bounded their shape."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.routing import IntegerConverter, Map

from sites.schema import MAX_ID
from tower.errors import GridtowerError

#: The longest value of a query parameter or a path part.
MAX_PARAMETER_LENGTH = 2000
#: The most query parameters one request may give.
MAX_PARAMETERS = 100


class BadParameter(GridtowerError):
    """A path or query parameter is invalid."""

    status = 400


class BoundedInteger(IntegerConverter):
    """`<int:...>` (an id) of at most MAX_ID: a larger id names nothing (404), never an
    overflow in the database."""

    def __init__(self, url_map: Map, fixed_digits: int = 0, min: int | None = None,
                 max: int | None = MAX_ID, signed: bool = False) -> None:
        super().__init__(url_map, fixed_digits, min, max, signed)


def install(app: Flask) -> None:
    """Bound `<int:>` in routes (call before the blueprints are registered) and check every
    request's strings."""
    app.url_map.converters["int"] = BoundedInteger
    app.before_request(_check_strings)


def _check_strings() -> None:
    if len(request.args) > MAX_PARAMETERS:
        raise BadParameter(f"more than {MAX_PARAMETERS} query parameters", field="query")
    given = [*((name, value) for name, value in request.args.items(multi=True)),
             *((name, value) for name, value in (request.view_args or {}).items()
               if isinstance(value, str))]
    for name, value in given:
        if "\x00" in name or "\x00" in value:
            raise BadParameter(f"{name!r}: a NUL character is not allowed", field=name)
        if len(value) > MAX_PARAMETER_LENGTH:
            raise BadParameter(f"{name}: longer than {MAX_PARAMETER_LENGTH} characters",
                               field=name)


def whole_number(name: str, default: int, low: int, high: int = MAX_ID) -> int:
    """The query parameter `name` as a whole number from `low` to `high` (ASCII digits:
    `int` would read other scripts' digits too), or `default` when it is not given."""
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))
            and low <= int(text) <= high):
        raise BadParameter(f"{name}: expected a whole number from {low} to {high}",
                           field=name)
    return int(text)
