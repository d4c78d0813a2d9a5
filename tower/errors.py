"""The exception tree of the tower. Each class's docstring is its default message."""

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


class SpecError(GridtowerError):
    """The production request is invalid."""

    status = 400
    exit_code = 2


class NotFound(GridtowerError):
    """No such object."""

    status = 404
    exit_code = 3


class Conflict(GridtowerError):
    """The object already exists or is in a state that forbids this."""

    status = 409
    exit_code = 4


class IllegalTransition(Conflict):
    """This state change is not allowed."""


class Forbidden(GridtowerError):
    """The certificate's roles do not allow this."""

    status = 403
    exit_code = 5


class Unauthorized(Forbidden):
    """A client certificate is required."""

    status = 401


class BackendError(GridtowerError):
    """A backend (batch system, broker, transfer) failed."""

    status = 502


class TransferError(BackendError):
    """A transfer failed."""


class SourceError(TransferError):
    """The file to copy is missing at its source, or differs from what was recorded."""


class OutsideRoot(SourceError):
    """A path built from outside input leaves its root: it is never opened, and waiting
    will not make it right."""
