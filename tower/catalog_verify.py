"""`catalog verify` for the CLI and the API: the catalog's verify, looking through the
runtime's transfer backends."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from catalog.verify import Found, verify
from tower.errors import TransferError
from tower.runtime import Runtime


def verify_dataset(runtime: Runtime, dataset: str) -> dict[str, Any]:
    """Check every replica of `dataset` at its destination; see catalog.verify."""

    def stat(destination: str, path: str) -> Found | None:
        # a destination taken out of tower.yaml cannot be looked at: unreachable, not bad
        if destination not in runtime.config.storage.destinations:
            raise TransferError(f"destination {destination!r} is not in tower.yaml's "
                                "storage.destinations")
        return runtime.transfer(destination).stat(path)

    with Session(runtime.engine) as session:
        return verify(session, dataset, stat)
