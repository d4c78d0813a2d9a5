"""The `BatchSystem` seam: submit pilots to a site, read their states, cancel them."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sites.config import SiteConfig
from sites.errors import ConfigError
from sites.registry import resolve
from sites.runner import Runner
from sites.schema import build

#: Batch system name -> backend.
BATCH_SYSTEMS = {
    "local": "sites.local:LocalBatch",
    "slurm": "sites.slurm:SlurmBatch",
    "condor": "sites.condor:CondorBatch",
    "arc": "sites.arc:ArcBatch",
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
    #: Files the pilot finds in its working directory, by name (its credential): only for a
    #: batch system that `carries_inputs`; the others get them written at the site.
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """One check of `tower sites check`: a harmless command run at the site (`argv`), or a
    step the backend takes itself (`step`: returns what it saw, raises BackendError)."""

    name: str
    argv: list[str] | None = None
    step: Callable[[], str] | None = None


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

    #: Whether the pilot's input files travel with its batch job (PilotRequest.inputs);
    #: else the tower writes them at the site through its runner.
    carries_inputs: bool

    def log_path(self, pilot_id: str) -> str:
        """Where the pilot's output goes, at the site."""

    def probes(self) -> list[Probe]:
        """Harmless checks that show the batch system answers (`tower sites check`)."""

    def submit(self, request: PilotRequest) -> str:
        """Start one pilot; return its batch id. Raises BackendError if the site refuses."""

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        """States of `batch_ids`; an id the system no longer knows maps to ENDED."""

    def cancel(self, batch_ids: list[str]) -> None:
        """Ask the system to end these pilots (they get SIGTERM first)."""

    def credential(self) -> str | None:
        """What the tower authenticates to the batch system with, and until when (`tower
        sites`); None when it is the runner's affair. Raises BackendError if refused."""


def check_options(site: SiteConfig, source: str) -> None:
    """Refuse, when sites.yaml is loaded, `batch_options` the site's batch system would refuse
    (ConfigError naming the key): a value that would become a batch directive of its own
    never waits for the first submission; nor does an unknown batch system."""
    key = f"sites.{site.name}.batch"
    try:
        backend = resolve(BATCH_SYSTEMS, site.batch, "batch system")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {key}: {exc}", field=key) from None
    model = getattr(backend, "options_model", None)
    if model is not None:
        build(model, site.batch_options, source, prefix=f"sites.{site.name}.batch_options")


def open_batch_system(site: SiteConfig, runner: Runner) -> BatchSystem:
    backend: Any = resolve(BATCH_SYSTEMS, site.batch, "batch system")
    return backend(site, runner)  # type: ignore[no-any-return]
