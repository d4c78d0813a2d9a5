"""The site admin's `sites.yaml`: one entry per batch site."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pilots.containers import BUILTIN, runtime_problem
from sites.errors import ConfigError
from sites.schema import Cores, Int32, Megabytes, Seconds, Strict, build, read_yaml

#: What a job needs of the pilot that runs it, in the order a misfit is told.
NEEDS = ("cores", "memory", "walltime")
#: The needs a retry may grow: a job then has its own, in the columns of these names.
GROWN = ("memory", "walltime")
_UNITS = {"cores": " cores", "memory": " MB", "walltime": "s"}


def amount(need: str, value: int) -> str:
    """`value` of `need` as messages show it: 8 cores, 2000 MB, 3600s."""
    return "1 core" if need == "cores" and value == 1 else f"{value}{_UNITS[need]}"


@dataclass(frozen=True)
class Needs:
    """What one job needs: cores, memory (MB; None: it asks none), walltime (s), and the
    container runtime it runs in (None: it runs bare)."""

    cores: int
    memory: int | None
    walltime: int
    runtime: str | None = None

    def grown(self, memory: int | None, walltime: int | None) -> Needs:
        """These needs with a job's own memory and walltime (a retry grew them) where those are
        larger: a production tuned up since the retry gives its jobs the tuned value."""
        return replace(self, memory=_larger(memory, self.memory),
                       walltime=_larger(walltime, self.walltime) or self.walltime)


def _larger(own: int | None, production: int | None) -> int | None:
    return production if own is None else own if production is None else max(own, production)


class Containers(Strict):
    """The container runtimes a site's pilots offer (pilots.containers)."""

    #: Where the site keeps images run by path (bubblewrap's directories, apptainer's files):
    #: a production's image is named under it, and never leaves it.
    images: str | None = None
    #: The runtimes offered: a list of built-in names (pilots.containers.BUILTIN), or a
    #: mapping of names to null (the built-in) or templates overriding the built-in's keys
    #: (argv, bind, read_only, environment, kind), for a runtime installed elsewhere.
    runtimes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("runtimes", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {name: None for name in value}
        if not isinstance(value, dict):
            raise ValueError("expected a list of runtime names or a mapping of names to "
                             "templates")
        templates = {}
        for name, override in value.items():
            if override is not None and not isinstance(override, dict):
                raise ValueError(f"{name}: expected a mapping of argv, bind, read_only, "
                                 "environment, kind (or nothing: the built-in)")
            if name not in BUILTIN and not override:
                raise ValueError(f"{name}: not a built-in runtime ({', '.join(BUILTIN)}): "
                                 "give its argv, bind, read_only and kind")
            template = {**BUILTIN.get(name, {}), **(override or {})}
            unknown = set(template) - {"argv", "bind", "read_only", "environment", "kind"}
            problem = (f"{sorted(unknown)[0]}: unknown key" if unknown
                       else runtime_problem(template))
            if problem:
                raise ValueError(f"{name}: {problem}")
            templates[str(name)] = template
        return templates

    @field_validator("images")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_absolute():
            raise ValueError("must be an absolute path at the site")
        return value


class PilotShape(Strict):
    """What one pilot is: its batch request and how it behaves."""

    #: Payloads a pilot runs at once.
    slots: Int32 = Field(default=1, gt=0)
    #: Cores and memory (MB) of the whole pilot, shared by the jobs it runs at once (while
    #: the sum of theirs fits: 4 slots of 1 core run one 1-core job at a time); a job
    #: needing more than the pilot has is never matched to it. Cores default to the slots.
    #: Memory unset means the site does not say: the tower then matches jobs of any memory
    #: there (the batch system enforces what it enforces), so a site admin who wants
    #: memory matched declares it.
    cores: Cores = 1
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
    #: Bytes of each attempt's stdout and stderr the pilot ships to the tower, gzipped (a
    #: longer log is cut in its middle); 0 ships none. At most the API's largest body.
    log_bytes: int = Field(default=2_000_000, ge=0, le=8_000_000)
    #: The container runtimes its payloads may run in; none: jobs in containers go elsewhere.
    containers: Containers = Containers()

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

    def offer(self, need: str) -> int | None:
        """The most of `need` (one of NEEDS) this pilot gives one job; None: not known,
        no limit."""
        return {"cores": self.cores, "memory": self.memory, "walltime": self.longest_job}[need]

    def holds(self, need: str, value: int | None) -> bool:
        """Whether a job asking `value` of `need` (None: nothing) fits this pilot."""
        offered = self.offer(need)
        return value is None or offered is None or value <= offered

    def runs(self, runtime: str | None) -> bool:
        """Whether this pilot runs a job in `runtime` (None: a bare job, run anywhere)."""
        return runtime is None or runtime in self.containers.runtimes

    def misfit(self, needs: Needs) -> str | None:
        """The first need (of NEEDS, then `runtime`) this pilot cannot hold, or None when it
        holds all: the one test of whether a job fits a pilot, which matching, claims, the
        factory, submit and retries share."""
        return next((need for need in NEEDS if not self.holds(need, getattr(needs, need))),
                    None if self.runs(needs.runtime) else "runtime")

    def shortfall(self, needs: Needs) -> str | None:
        """What this pilot lacks for a job of `needs`, as messages tell it; None when it
        holds the job."""
        need = self.misfit(needs)
        if need is None:
            return None
        if need == "runtime":
            return (f"runtime: it runs in a {needs.runtime} container, the site's pilots "
                    f"offer {self.runtime_summary()}")
        asked, offered = getattr(needs, need), self.offer(need)
        assert asked is not None and offered is not None
        margin = " (pilot walltime minus drain margin)" if need == "walltime" else ""
        return (f"{need}: it needs {amount(need, asked)}, a pilot gives a job at most "
                f"{amount(need, offered)}{margin}")

    def runtime_summary(self) -> str:
        """The container runtimes on offer, as messages tell them."""
        return ", ".join(self.containers.runtimes) or "no container runtime"

    def summary(self) -> str:
        """The shape as messages show it: 8 cores, 16000 MB, 595s a job."""
        memory = "memory not declared" if self.memory is None else amount("memory", self.memory)
        return (f"{amount('cores', self.cores)}, {memory}, "
                f"{amount('walltime', self.longest_job)} a job")


class Limits(Strict):
    """How far the factory may go at this site."""

    max_queued: int = Field(default=2, ge=0)
    max_running: int = Field(default=4, ge=0)
    max_per_cycle: int = Field(default=2, ge=0)
    #: A pilot pending longer than this in the batch queue is cancelled and replaced.
    max_queue_wait: Seconds | None = Field(default=None, gt=0)
    #: After the site refused a submission (or could not be reached), the factory submits
    #: nothing there for this long: one try per pause, not one per cycle.
    error_pause: Seconds = Field(default=60, ge=0)
    #: A pilot reserved this long without a batch id was left by a tower that died
    #: between deciding and submitting, and counts no more: longer than a submission to
    #: this site can take.
    unsubmitted_after: Seconds = Field(default=300, gt=0)


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
