"""The base of gridtower's exception tree, and the errors of the sites' seams.

Each class's docstring is its default message; `status` is the HTTP status the
API answers with and `exit_code` the CLI's exit code when the error reaches them.
The layers above add their own (`transfer.errors`, `catalog.errors`), and
`tower.errors` gathers the whole tree.
"""

from __future__ import annotations


class GridtowerError(Exception):
    """gridtower failed."""

    #: HTTP status the API answers with when this error reaches it.
    status = 500
    #: CLI exit code when this error reaches `tower`.
    exit_code = 1

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "message": str(self), "field": self.field}


class ConfigError(GridtowerError):
    """The configuration is invalid."""

    status = 400
    exit_code = 2


class BackendError(GridtowerError):
    """A backend (batch system, broker, transfer) failed."""

    status = 502
