"""The `BatchSystem` seam: submit pilots to a site, read their states, cancel them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from sites.config import SiteConfig
from sites.registry import resolve
from sites.runner import Runner
from sites.schema import build

#: Batch system name -> backend.
BATCH_SYSTEMS = {
    "local": "sites.local:LocalBatch",
    "slurm": "sites.slurm:SlurmBatch",
    "condor": "sites.condor:CondorBatch",
}


class BatchState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"


@dataclass(frozen=True)
class PilotRequest:
    """One pilot to start: what runs, with which environment, where its log goes."""

    pilot_id: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchStatus:
    state: BatchState
    exit_code: int | None = None
    #: The batch system's own word for how it ended (TIMEOUT, NODE_FAIL, ...).
    reason: str | None = None
    #: For an ended pilot: the outcome class its unfinished attempts get
    #: (tower.retries.policy.Outcome values: preempted, node_failure, out_of_memory, ...).
    outcome: str | None = None


class BatchSystem(Protocol):
    """One per site; made with (site: SiteConfig, runner: Runner)."""

    def log_path(self, pilot_id: str) -> str:
        """Where the pilot's output goes, at the site."""

    def probes(self) -> list[list[str]]:
        """Harmless commands that show the batch system answers (`tower sites check`)."""

    def submit(self, request: PilotRequest) -> str:
        """Start one pilot; return its batch id. Raises BackendError if the site refuses."""

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        """States of `batch_ids`; an id the system no longer knows maps to ENDED."""

    def cancel(self, batch_ids: list[str]) -> None:
        """Ask the system to end these pilots (they get SIGTERM first)."""


def check_options(site: SiteConfig, source: str) -> None:
    """Refuse, when sites.yaml is loaded, `batch_options` the site's batch system would refuse
    (ConfigError naming the key): a value that would become a batch directive of its own
    never waits for the first submission. An unknown batch system is reported on first use."""
    if site.batch in BATCH_SYSTEMS:
        model = getattr(resolve(BATCH_SYSTEMS, site.batch, "batch system"), "options_model",
                        None)
        if model is not None:
            build(model, site.batch_options, source, prefix=f"sites.{site.name}.batch_options")


def open_batch_system(site: SiteConfig, runner: Runner) -> BatchSystem:
    backend: Any = resolve(BATCH_SYSTEMS, site.batch, "batch system")
    return backend(site, runner)  # type: ignore[no-any-return]
