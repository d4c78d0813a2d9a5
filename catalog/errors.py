"""The errors of the catalog's lookups and changes (their base is `sites.errors`)."""

from __future__ import annotations

from sites.errors import GridtowerError


class NotFound(GridtowerError):
    """No such object."""

    status = 404
    exit_code = 3


class Conflict(GridtowerError):
    """The object already exists or is in a state that forbids this."""

    status = 409
    exit_code = 4
