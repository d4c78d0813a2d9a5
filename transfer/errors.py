"""The errors of the `Transfer` seam (their base is `sites.errors.BackendError`)."""

from __future__ import annotations

from sites.errors import BackendError


class TransferError(BackendError):
    """A transfer failed."""


class SourceError(TransferError):
    """The file to copy is missing at its source, or differs from what was recorded."""


class OutsideRoot(SourceError):
    """A path built from outside input leaves its root: it is never opened, and waiting
    will not make it right."""
