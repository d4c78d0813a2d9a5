"""The site admin's `sites.yaml`: one entry per batch site."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sites.errors import ConfigError
from sites.schema import Int32, Megabytes, Seconds, Strict, build, read_yaml


class PilotShape(Strict):
    """What one pilot is: its batch request and how it behaves."""

    #: Payloads a pilot runs at once.
    slots: Int32 = Field(default=1, gt=0)
    #: The pilot's cores (default: its slots, one core a slot). Its payloads run together
    #: while the sum of their cores fits: 4 slots of 1 core run one 1-core job at a time.
    cores: Int32 = Field(default=1, gt=0)
    memory: Megabytes | None = Field(default=None, gt=0)
    #: How far (a fraction) a payload may go over its memory request before its pilot
    #: kills it as `out_of_memory`; 0.1 lets a 1000 MB job peak at 1100 MB.
    memory_tolerance: float = Field(default=0.1, ge=0, le=10)
    #: How the pilot measures and enforces its payloads' memory: `auto` (the cgroup v2
    #: memory controller when it may use one, else polling /proc), `cgroup`, `poll`, or
    #: `off` (only the peak of each payload's largest process, nothing enforced).
    memory_watch: Literal["auto", "cgroup", "poll", "off"] = "auto"
    walltime: Seconds = Field(default=3600, gt=0)
    #: The pilot stops taking work when less than the next job's walltime plus this remains.
    drain_margin: Seconds = Field(default=60, ge=0)
    #: The pilot exits after finding no work for this long.
    idle_timeout: Seconds = Field(default=120, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _cores_of_slots(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cores" not in data and "slots" in data:
            return {**data, "cores": data["slots"]}
        return data

    @property
    def longest_job(self) -> int:
        """The longest walltime a job may ask and still be taken: a pilot takes a job only
        when the job's walltime plus the drain margin fits in its walltime left."""
        return self.walltime - self.drain_margin


class Limits(Strict):
    """How far the factory may go at this site."""

    max_queued: int = Field(default=2, ge=0)
    max_running: int = Field(default=4, ge=0)
    max_per_cycle: int = Field(default=2, ge=0)
    #: A pilot pending longer than this in the batch queue is cancelled and replaced.
    max_queue_wait: Seconds | None = Field(default=None, gt=0)


class Backlog(Strict):
    """How many jobs the broker may hold for one site queue (late binding).

    The bound follows the payload slots of the queue's running pilots, so a
    site takes from the database only what it can start soon, and no job waits
    in one site's queue while another site idles.
    """

    #: Jobs per payload slot of the running pilots.
    per_slot: float = Field(default=2.0, gt=0)
    #: Never fewer (the first pilot should find work at once); default: one pilot's slots.
    min: int | None = Field(default=None, gt=0)
    #: Never more.
    max: int | None = Field(default=None, gt=0)


class SshAccess(Strict):
    """A site reached through an SSH login node; key authentication, known host keys only."""

    host: str = Field(min_length=1)
    port: int = Field(default=22, gt=0, le=65535)
    user: str = Field(min_length=1)
    #: The private key (0600); no agent, no password.
    key_file: str
    #: The site's host key must be here: unknown or changed keys are refused.
    known_hosts: str = "~/.ssh/known_hosts"
    #: Seconds for connecting and for each command.
    timeout: Seconds = Field(default=30, gt=0)


class SiteData(Strict):
    """The storage element a site's jobs read input data from: a destination of
    tower.yaml, mounted at the site. A file the catalog holds there is at the site."""

    #: The destination (in tower.yaml's storage.destinations).
    destination: str = Field(min_length=1)
    #: Where the site's jobs see that destination's root.
    path: str


class SiteConfig(Strict):
    name: str
    batch: str = "local"
    #: Options of the batch system, checked by it.
    batch_options: dict[str, Any] = Field(default_factory=dict)
    #: How the tower reaches the site's batch commands: over SSH, or (absent) locally.
    ssh: SshAccess | None = None
    enabled: bool = True
    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    pilot: PilotShape = PilotShape()
    limits: Limits = Limits()
    #: The pilot program at the site, as an argv list.
    pilot_command: list[str] = Field(default_factory=lambda: ["pilot"], min_length=1)
    #: Shell lines run before the pilot (module load, container setup).
    setup: list[str] = Field(default_factory=list)
    #: Where pilots make the work directories of their jobs.
    scratch: str
    #: Where pilots leave outputs for the tower's stager.
    storage: str
    backlog: Backlog = Backlog()
    #: The broker's URL as this site's pilots reach it (default: the tower's own).
    broker_url: str | None = None
    #: Input data held at the site: jobs needing it are brokered here, or it is staged in.
    data: SiteData | None = None

    @model_validator(mode="after")
    def _absolute_paths(self) -> SiteConfig:
        paths = {"scratch": self.scratch, "storage": self.storage,
                 **({"data.path": self.data.path} if self.data else {})}
        for key, value in paths.items():
            if not Path(value).is_absolute():
                raise ValueError(f"{key} must be an absolute path at the site")
        return self

    def backlog_limit(self, running_slots: int) -> int:
        """The bound on jobs queued at one of this site's queues, given its running slots."""
        limit = max(self.backlog.min or self.pilot.slots,
                    math.ceil(self.backlog.per_slot * running_slots))
        return min(limit, self.backlog.max) if self.backlog.max else limit


def load_sites(path: Path) -> dict[str, SiteConfig]:
    """Read sites.yaml (`sites: {name: {...}}`); errors name the file and the key."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict) or not isinstance(data.get("sites", {}), dict):
        raise ConfigError(f"{path}: sites: expected a mapping of site names to settings",
                          field="sites")
    unknown = set(data) - {"sites"}
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}: unknown key", field=sorted(unknown)[0])
    sites = {}
    for name, entry in (data.get("sites") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: sites.{name}: expected a mapping", field=f"sites.{name}")
        entry = {**entry, "name": str(name)}
        for key in ("scratch", "storage"):
            if isinstance(entry.get(key), str):
                entry[key] = str(Path(entry[key]).expanduser())
        sites[str(name)] = build(SiteConfig, entry, str(path), prefix=f"sites.{name}")
    return sites
