"""The exception tree of the tower. Each class's docstring is its default message.

The base and the errors of the lower layers are defined beside their seams
(`sites.errors`, `transfer.errors`, `catalog.errors`) and gathered here, so the
tower, the API and the CLI import every error from this one module.
"""

from __future__ import annotations

from catalog.errors import Conflict, NotFound
from sites.errors import BackendError, ConfigError, GridtowerError
from transfer.errors import OutsideRoot, SourceError, TransferError

__all__ = ["BackendError", "ConfigError", "Conflict", "Forbidden", "GridtowerError",
           "IllegalTransition", "NotFound", "OutsideRoot", "SchemaError", "SourceError",
           "SpecError", "TransferError", "Unauthorized"]


class SpecError(GridtowerError):
    """The production request is invalid."""

    status = 400
    exit_code = 2


class IllegalTransition(Conflict):
    """This state change is not allowed."""


class Forbidden(GridtowerError):
    """The certificate's roles do not allow this."""

    status = 403
    exit_code = 5


class Unauthorized(Forbidden):
    """A client certificate is required."""

    status = 401


class SchemaError(GridtowerError):
    """The database's schema revision is not this gridtower's: run `tower db upgrade`."""

    status = 503
    exit_code = 6
