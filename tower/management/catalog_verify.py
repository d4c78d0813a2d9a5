"""`catalog verify` for the CLI and the API: the catalog's verify, looking through the
runtime's transfer backends, and the files in the dataset's directories that nothing
names (tower.loops.leftovers), removed when asked."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from catalog.verify import Found, verify
from tower.errors import TransferError
from tower.loops import leftovers
from tower.runtime import Runtime


def verify_dataset(runtime: Runtime, dataset: str, remove: bool = False) -> dict[str, Any]:
    """Check every replica of `dataset` at its destination (see catalog.verify), and list
    the files in its directory at each destination that nothing names (`leftovers`:
    orphans and temporaries of dead copies); with `remove`, remove them (`removed`)."""
    destinations = runtime.config.storage.destinations

    def stat(destination: str, path: str) -> Found | None:
        # a destination taken out of tower.yaml cannot be looked at: unreachable, not bad
        if destination not in destinations:
            raise TransferError(f"destination {destination!r} is not in tower.yaml's "
                                "storage.destinations")
        return runtime.transfer(destination).stat(path)

    with Session(runtime.engine) as session:
        summary = verify(session, dataset, stat)
        looked = sorted(name for name, _ in leftovers.places(session, dataset))
    unreachable = {row["destination"] for row in summary["unreachable"]}
    found: list[leftovers.Leftover] = []
    for destination in looked:
        if destination in unreachable or destination not in destinations:
            continue
        try:
            found.extend(leftovers.at_destination(runtime, destination, dataset))
        except TransferError as exc:
            summary["unreachable"].append({"destination": destination, "error": str(exc),
                                           "replicas": 0})
    summary["leftovers"] = [leftover.as_dict() for leftover in found]
    summary["removed"] = leftovers.remove(runtime, found) if remove else 0
    return summary
