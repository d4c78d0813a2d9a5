"""Production requests: the YAML schema, inheritance from parents, checks, and job splitting.

A request is resolved against its parents (in the same file or already in the
database), validated whole — schema, sites, every template rendered for a
trial job — and only then turned into rows by `tower.management.productions`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from pilots.containers import environment_problem, image_problem
from pilots.rendering import TemplateProblem, identifiers, render
from sites.config import NEEDS, Needs, PilotShape, amount
from sites.schema import (
    MAX_INTEGER,
    Cores,
    Int32,
    Megabytes,
    OutOfBounds,
    Seconds,
    Strict,
    build,
    read_yaml_documents,
)
from tower.errors import SpecError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
#: An environment variable's name, as POSIX shells and `env` accept it.
ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The most jobs one production may hold, whatever its events (and after every extend):
#: a request is checked and split before anything is written.
MAX_JOBS = 1_000_000
#: The longest chain of parents within one file (a parent in the database is resolved).
MAX_PARENTS = 50
#: Keys merged entry by entry with the parent's, instead of replaced whole.
MERGED_KEYS = ("parameters", "steering", "environment")
#: Keys that belong to one request and are never inherited.
OWN_KEYS = ("name", "parent", "abstract")

#: Variables the tower knows for each job.
JOB_VARIABLES = ("production", "dataset", "software", "index", "seed", "first_event",
                 "last_event", "events", "attempt", "spec_dir")
#: Variables only the pilot knows, filled in at the site.
PILOT_VARIABLES = ("output_dir", "work_dir", "input_dir", "python", "cores", "site",
                   "pilot_id", "inputs")
#: Variables of the post step: the staged output's local path and its name.
POST_VARIABLES = ("file", "name")


class RetrySpec(Strict):
    #: The retry policy (tower.yaml's retry.policy when unset).
    policy: str | None = Field(default=None, min_length=1)
    #: Attempts a job gets at most, below the policy's own max_attempts.
    max_attempts: int | None = Field(default=None, gt=0, le=100)


class TrialSpec(Strict):
    """A first run of a few events; the rest waits for approval."""

    events: int = Field(gt=0)
    #: `manual`: wait for `tower approve`; `auto`: approve itself when every trial job
    #: succeeded (else wait for a person).
    approve: Literal["manual", "auto"] = "manual"
    #: `propose`: show the walltime, memory and events per job the trial suggests;
    #: `set`: use them for the full run when it is approved.
    tune: Literal["propose", "set"] = "propose"
    #: What a full job should last; default: the largest walltime the allowed sites'
    #: pilots can give a job.
    target_walltime: Seconds | None = Field(default=None, gt=0)


#: `tune: auto`'s defaults: the safety factor on the observed p95, and the successful
#: attempts it waits for before it changes anything.
TUNE_FACTOR = 1.5
TUNE_MIN_SAMPLE = 20


class TuneSpec(Strict):
    """`tune: auto`: later jobs' memory and walltime follow what the production's successful
    attempts used — their p95 times `factor` — within what the allowed sites' pilots offer
    (tower.loops.tune)."""

    mode: Literal["off", "auto"] = "auto"
    factor: float = Field(default=TUNE_FACTOR, ge=1.0, le=10.0, strict=True)
    min_sample: int = Field(default=TUNE_MIN_SAMPLE, ge=5, le=1000, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `tune: auto`; YAML reads a bare `off` as false
        if value is False:
            return {"mode": "off"}
        if isinstance(value, str):
            return {"mode": value}
        if not isinstance(value, dict):
            raise ValueError("expected auto, off, or a mapping such as {mode: auto, factor: "
                             f"1.5, min_sample: 20}}, got {value!r}")
        return value


#: The most input files one job of a split production reads.
MAX_FILES_PER_JOB = 10_000


class InputSource(Strict):
    """`inputs` entry that reads another production's dataset as it fills (a chain):
    its files whose names match `outputs`, each as soon as it is cataloged good."""

    production: str = Field(pattern=NAME_PATTERN)
    #: A file name glob of `*` and `?`.
    outputs: str = Field(default="*", min_length=1, max_length=255,
                         pattern=r"^[^/\[\]\x00-\x1f]+$")


class SplitSpec(Strict):
    """One job per group of input files: `files_per_job` files, or files until their
    events reach `events_per_job` (the input files must carry event counts)."""

    files_per_job: int | None = Field(default=None, gt=0, le=MAX_FILES_PER_JOB, strict=True)
    events_per_job: int | None = Field(default=None, gt=0, le=MAX_INTEGER, strict=True)

    @model_validator(mode="after")
    def _one_rule(self) -> SplitSpec:
        if (self.files_per_job is None) == (self.events_per_job is None):
            raise ValueError("give one of files_per_job or events_per_job")
        return self


class ContainerSpec(Strict):
    """The image a production's jobs run in, and the runtime that runs it (a site offers
    runtimes in sites.yaml: `pilot.containers`)."""

    #: A path under the site's images root (a `path` runtime's), or a registry's reference.
    image: str = Field(min_length=1, max_length=1001)
    runtime: str = Field(pattern=NAME_PATTERN)

    @field_validator("image")
    @classmethod
    def _image_name(cls, value: str) -> str:
        problem = image_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ProductionSpec(Strict):
    """A production request, resolved (every inherited key filled in)."""

    name: str = Field(pattern=NAME_PATTERN)
    parent: str | None = None
    abstract: bool = False
    description: str = ""
    software: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    steering: dict[str, str] = Field(default_factory=dict)
    #: The container its jobs run in (None: bare, in the site's own environment); before
    #: `environment`, which is checked against it.
    container: ContainerSpec | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    events_total: int = Field(gt=0)
    events_per_job: Int32 = Field(gt=0)
    walltime: Seconds = Field(gt=0)
    #: What each job needs of its pilot; memory unset: the job asks none.
    cores: Cores = 1
    memory: Megabytes | None = Field(default=None, gt=0)
    sites: list[str] = Field(default_factory=list)
    queue: str = Field(default="default", pattern=NAME_PATTERN)
    priority: Int32 = 0
    #: The fair-share group its jobs count against (tower.yaml `shares`).
    group: str = Field(default="default", pattern=NAME_PATTERN)
    trial: TrialSpec | None = None
    #: `auto`: memory and walltime follow the successful attempts' p95 (TuneSpec).
    tune: TuneSpec | None = None
    retry: RetrySpec = RetrySpec()
    #: Catalog files every job reads: logical names (/dataset/file) or dataset names; or
    #: another production's outputs as they are cataloged (InputSource: a chain).
    inputs: list[str | InputSource] = Field(default_factory=list, max_length=100)
    outputs: list[str] = Field(default_factory=list)
    #: Run by the tower for each output once it is staged and cataloged (a template, like
    #: `command`, with ${file} and ${name} too); a non-zero exit rejects the output.
    post: list[str] = Field(default_factory=list)
    post_timeout: Seconds = Field(default=600, gt=0)
    destinations: list[str] = Field(default_factory=list)
    dataset: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,299}$")
    #: Seeds are seed_base + index, in a 64-bit column.
    seed_base: int | None = Field(default=None, ge=0, le=MAX_INTEGER - MAX_JOBS)
    spec_dir: str = ""
    #: One job per group of input files, each reading only its own (tower.management.chains).
    split: SplitSpec | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _input_sources(cls, value: Any) -> Any:
        # a mapping is another production's outputs: its own errors, not the union's
        if not isinstance(value, list):
            return value
        entries = []
        for position, entry in enumerate(value):
            if isinstance(entry, dict):
                try:
                    entry = InputSource.model_validate(entry)
                except ValidationError as exc:
                    problem = exc.errors()[0]
                    message = str(problem["msg"]).removeprefix("Value error, ")
                    if problem["type"] == "string_pattern_mismatch":
                        message = "a file name glob of * and ?, without / [ ]"
                    raise OutOfBounds(message, (position, *problem["loc"])) from None
            entries.append(entry)
        return entries

    @model_validator(mode="before")
    @classmethod
    def _jobs_by_input(cls, value: Any) -> Any:
        # a production split by its inputs gets its jobs (and events) from its files: one
        # that reads another's outputs is split, a file a job, unless it says otherwise
        if not isinstance(value, dict):
            return value
        chained = any(isinstance(entry, dict) for entry in value.get("inputs") or [])
        if chained and value.get("split") is None:
            value = {**value, "split": {"files_per_job": 1}}
        if value.get("split") is not None:
            if value.get("trial") is not None:
                raise OutOfBounds("a production split by its inputs has no trial (its jobs "
                                  "come as its files do)", ("trial",))
            value = {"events_total": 1, "events_per_job": 1, **value}
        return value

    @model_validator(mode="after")
    def _split_has_inputs(self) -> ProductionSpec:
        if self.split is not None and not self.inputs:
            raise ValueError("split: a production split by its inputs needs inputs")
        return self

    @property
    def upstream(self) -> list[tuple[int, InputSource]]:
        """The productions whose outputs this one reads, with each entry's position."""
        return [(n, entry) for n, entry in enumerate(self.inputs)
                if isinstance(entry, InputSource)]

    @field_validator("steering")
    @classmethod
    def _plain_file_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if ("/" in name or name in ("", ".", "..") or len(name) > 255
                    or not name.isprintable()):
                raise ValueError(f"{name!r} must be a plain file name")
        return value

    @field_validator("environment")
    @classmethod
    def _environment_names(cls, value: dict[str, str], info: ValidationInfo
                           ) -> dict[str, str]:
        for name in value:
            if not ENVIRONMENT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name "
                                 "(letters, digits and _, not starting with a digit)")
        # the runtime runs with the payload's environment: it must not rewrite its binds
        problem = info.data.get("container") and environment_problem(list(value))
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("outputs")
    @classmethod
    def _relative_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            parts = pattern.split("/")
            if not pattern or pattern.startswith("/") or ".." in parts or "" in parts:
                raise ValueError(f"{pattern!r}: an output pattern is a non-empty path "
                                 "relative to the job's output dir, without '..' or '//'")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_parts(cls, value: str | None) -> str | None:
        if value is not None and any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError(f"{value!r}: a dataset name has no empty, '.' or '..' part "
                             "(no '//' and no '/' at the end)")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a valid variable name")
            if name in JOB_VARIABLES or name in PILOT_VARIABLES or name in POST_VARIABLES:
                raise ValueError(f"{name!r} is a built-in variable and cannot be a parameter")
        return value

    @field_validator("events_per_job")
    @classmethod
    def _job_count(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("events_total")
        if total is not None:
            check_job_count(total, value)
        return value

    @field_validator("trial")
    @classmethod
    def _trial_is_a_part(cls, value: TrialSpec | None, info: ValidationInfo
                         ) -> TrialSpec | None:
        total = info.data.get("events_total")
        if value is not None and total is not None and value.events >= total:
            raise ValueError(f"events: {value.events} must be fewer than events_total "
                             f"({total})")
        return value

    @property
    def dataset_name(self) -> str:
        return self.dataset or self.name

    @property
    def job_count(self) -> int:
        return math.ceil(self.events_total / self.events_per_job)

    @property
    def template_hash(self) -> str:
        """Identifies what each job runs: software, command, steering and environment."""
        what: list[Any] = [self.software, self.command, self.steering, self.environment]
        if self.container is not None:  # bare productions keep the hash they had
            what.append(self.container.model_dump())
        payload = json.dumps(what, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def check_job_count(events_total: int, events_per_job: int) -> None:
    """ValueError when `events_total` makes more than MAX_JOBS jobs of `events_per_job`."""
    if -(-events_total // events_per_job) > MAX_JOBS:  # ceil, in whole numbers
        raise ValueError(f"{events_total} events of {events_per_job} a job: a production "
                         f"holds at most {MAX_JOBS} jobs")


@dataclass(frozen=True)
class Resolved:
    """A request with its parents applied, and where each value came from."""

    spec: ProductionSpec
    #: key (or "parameters.x", "steering.f") -> name of the production that set it
    origins: dict[str, str]


@dataclass(slots=True)
class JobPlan:
    """One job as its production's split makes it (not frozen: a frozen dataclass costs
    five times more to make, and a submit makes a million)."""

    index: int
    seed: int
    first_event: int
    events: int


#: Looks up a production already in the database: (resolved spec dict, origins) or None.
ParentLookup = Callable[[str], tuple[dict[str, Any], dict[str, str]] | None]


def load_requests(path: Path) -> list[dict[str, Any]]:
    """The request documents of a YAML file (one, or several separated by `---`)."""
    return parse_requests(read_yaml_documents(path, error=SpecError), str(path),
                          str(path.parent.resolve()))


def parse_requests(documents: list[Any], source: str, spec_dir: str) -> list[dict[str, Any]]:
    """Check that `documents` are request mappings; relative paths in them are relative to
    `spec_dir` (the request file's directory)."""
    if not documents:
        raise SpecError(f"{source}: no production request in this file")
    for number, document in enumerate(documents, 1):
        if not isinstance(document, dict):
            raise SpecError(f"{source}: document {number}: expected a mapping of keys")
        if spec_dir:  # else a child keeps its parent's, where the parent's files are
            document.setdefault("spec_dir", spec_dir)
    return documents


def resolve_all(
    documents: list[dict[str, Any]],
    source: str,
    lookup: ParentLookup,
    known_sites: Mapping[str, Any],
    known_destinations: Mapping[str, Any],
    known_policies: Collection[str],
) -> list[Resolved]:
    """Resolve and check every non-abstract request; raise SpecError at the first problem."""
    by_name: dict[str, dict[str, Any]] = {}
    for number, document in enumerate(documents, 1):
        name = document.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"{source}: document {number}: name: required key is missing",
                            field="name")
        if name in by_name:
            raise SpecError(f"{source}: {name}: name appears twice in this file", field="name")
        by_name[name] = document
    resolved = []
    for name, document in by_name.items():
        raw, origins = _inherit(name, by_name, lookup, source, chain=())
        if document.get("abstract"):
            _check_keys(raw, f"{source}: {name}")
            continue
        where = f"{source}: production {name}"
        spec = build(ProductionSpec, raw, where, error=SpecError)
        check(spec, where, known_sites, known_destinations, known_policies)
        resolved.append(Resolved(spec, origins))
    if not resolved:
        raise SpecError(f"{source}: every request in this file is abstract; nothing to submit")
    return resolved


def _inherit(
    name: str, local: dict[str, dict[str, Any]], lookup: ParentLookup, source: str,
    chain: tuple[str, ...],
) -> tuple[dict[str, Any], dict[str, str]]:
    if name in chain:
        cycle = " -> ".join((*chain, name))
        raise SpecError(f"{source}: parent cycle: {cycle}", field="parent")
    if len(chain) > MAX_PARENTS:
        raise SpecError(f"{source}: production {chain[0]}: parent: a chain of more than "
                        f"{MAX_PARENTS} parents", field="parent")
    if name in local:
        document = local[name]
        parent = document.get("parent")
        if parent is None:
            return dict(document), _origins(document, name)
        if not isinstance(parent, str):
            raise SpecError(f"{source}: production {name}: parent: expected a name",
                            field="parent")
        base, origins = _inherit(parent, local, lookup, source, (*chain, name))
        return _merge(base, origins, document, name)
    stored = lookup(name)
    if stored is None:
        child = chain[-1] if chain else name
        raise SpecError(f"{source}: production {child}: parent: no production named {name!r} "
                        "in this file or in the database", field="parent")
    return dict(stored[0]), dict(stored[1])


def _merge(
    base: dict[str, Any], origins: dict[str, str], child: dict[str, Any], name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    merged = {key: value for key, value in base.items() if key not in OWN_KEYS}
    merged_origins = {key: value for key, value in origins.items()
                      if key.split(".", 1)[0] not in OWN_KEYS}
    for key, value in child.items():
        if key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
            merged_origins.update({f"{key}.{entry}": name for entry in value})
        else:
            merged[key] = value
            merged_origins[key] = name
            if key in MERGED_KEYS and isinstance(value, dict):
                merged_origins.update({f"{key}.{entry}": name for entry in value})
    # the child's directory serves only the templates it writes itself: one that names no
    # ${spec_dir} keeps the directory of the request whose files its templates name
    if "spec_dir" in base and "${spec_dir}" not in json.dumps(
            [child.get(key) for key in ("command", "steering", "environment", "post")]):
        merged["spec_dir"] = base["spec_dir"]
    return merged, merged_origins


def _origins(document: dict[str, Any], name: str) -> dict[str, str]:
    origins = {key: name for key in document}
    for key in MERGED_KEYS:
        if isinstance(document.get(key), dict):
            origins.update({f"{key}.{entry}": name for entry in document[key]})
    return origins


def _check_keys(raw: dict[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - set(ProductionSpec.model_fields))
    if unknown:
        raise SpecError(f"{where}: {unknown[0]}: unknown key", field=unknown[0])


def check(
    spec: ProductionSpec, where: str, known_sites: Mapping[str, Any],
    known_destinations: Mapping[str, Any], known_policies: Collection[str],
) -> None:
    """Checks beyond the schema: sites, destinations, the retry policy, and every template
    against its variables."""
    if spec.retry.policy is not None and spec.retry.policy not in known_policies:
        raise SpecError(f"{where}: retry.policy: no policy named {spec.retry.policy!r} "
                        f"(known: {', '.join(sorted(known_policies))})", field="retry.policy")
    for site in spec.sites:
        if site not in known_sites:
            raise SpecError(f"{where}: sites: unknown site {site!r} "
                            f"(known: {', '.join(sorted(known_sites)) or 'none'})", field="sites")
    for destination in spec.destinations:
        if destination not in known_destinations:
            raise SpecError(
                f"{where}: destinations: unknown destination {destination!r} "
                f"(known: {', '.join(sorted(known_destinations)) or 'none'})",
                field="destinations")
    if spec.events_per_job > spec.events_total:
        raise SpecError(f"{where}: events_per_job: larger than events_total "
                        f"({spec.events_per_job} > {spec.events_total})", field="events_per_job")
    _check_templates(where, templates(spec), {*JOB_VARIABLES, *PILOT_VARIABLES,
                                              *spec.parameters})
    # the post step runs at the tower, on the staged file: no pilot variables there
    _check_templates(where, ((f"post[{n}]", text) for n, text in enumerate(spec.post)),
                     {*JOB_VARIABLES, *POST_VARIABLES, *spec.parameters})


def _check_templates(where: str, items: Iterable[tuple[str, str]], defined: set[str]) -> None:
    for field, text in items:
        try:
            names = identifiers(text)
        except TemplateProblem as exc:
            raise SpecError(f"{where}: {field}: {exc}", field=field) from exc
        for name in names:
            if name not in defined:
                raise SpecError(f"{where}: {field}: ${{{name}}} is not defined (known: "
                                f"{', '.join(sorted(defined))})", field=field)


def templates(spec: ProductionSpec) -> Iterator[tuple[str, str]]:
    """Every template of a request, with the key that holds it."""
    for position, argument in enumerate(spec.command):
        yield f"command[{position}]", argument
    for name, text in spec.steering.items():
        yield f"steering.{name}", text
    for name, text in spec.environment.items():
        yield f"environment.{name}", text


def split(spec: ProductionSpec, start_index: int = 0, start_event: int = 0) -> Iterator[JobPlan]:
    """The jobs of `spec`: events_per_job each, the last one smaller when the total demands."""
    per_job, total = spec.events_per_job, spec.events_total
    for index, first in enumerate(range(start_event, total, per_job), start_index):
        yield JobPlan(index, seed_for(spec, index), first, min(per_job, total - first))


def seed_for(spec: ProductionSpec, index: int) -> int:
    """The seed of stream `index`: seed_base + index, or reproducible from the name and index."""
    if spec.seed_base is not None:
        return spec.seed_base + index
    digest = hashlib.sha256(f"{spec.name}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF  # fits any generator's 32-bit seed


def job_variables(spec: ProductionSpec, job: JobPlan, attempt: int) -> dict[str, Any]:
    """The variables the tower hands the pilot for one job."""
    return {
        **spec.parameters,
        "production": spec.name, "dataset": spec.dataset_name, "software": spec.software,
        "index": job.index, "seed": job.seed, "first_event": job.first_event,
        "last_event": job.first_event + job.events - 1, "events": job.events,
        "attempt": attempt, "spec_dir": spec.spec_dir,
    }



def trial_variables(spec: ProductionSpec, inputs: list[str] | None = None) -> dict[str, Any]:
    """The variables of a first job, with placeholders for what only the site knows;
    reading `inputs` (names of files in its input dir), if given."""
    variables = {**job_variables(spec, next(split(spec)), attempt=1),
                 **{name: f"<{name}>" for name in PILOT_VARIABLES}}
    if inputs is not None:
        variables["inputs"] = json.dumps([f"<input_dir>/{name}" for name in inputs])
    return variables


def preview(spec: ProductionSpec, inputs: list[str] | None = None) -> dict[str, Any]:
    """The first job rendered as a pilot would (trial_variables)."""
    variables = trial_variables(spec, inputs)
    return {
        "command": [render(argument, variables) for argument in spec.command],
        "steering": {name: render(text, variables) for name, text in spec.steering.items()},
        "environment": {name: render(text, variables) for name, text in spec.environment.items()},
    }


# -- where the jobs run: pilots that hold their needs, files named under ${spec_dir} ----------

#: `${spec_dir}` in a template and the path that follows it, up to a space, a quote, a
#: separator or another variable.
SPEC_DIR_PATH = re.compile(r"\$\{spec_dir\}(/[^\s'\"$;,]*)?")
#: How a submitter who is not at the tower gets files to the jobs (README: Production requests).
SHIPPING = ("a request sent from another machine names files there, which no job sees: "
            "put them where the sites read them (with the software, or a shared directory) "
            "and name them by absolute path or a parameter; ${spec_dir} is the request "
            "file's directory at the tower, for requests submitted there")


def needs_of(spec: ProductionSpec | Mapping[str, Any]) -> Needs:
    """What each job of a production needs (before a retry grows it); `spec` may be the
    stored dict."""
    container = _key(spec, "container")
    runtime = container and (container["runtime"] if isinstance(container, Mapping)
                             else container.runtime)
    return Needs(cores=_key(spec, "cores") or 1, memory=_key(spec, "memory"),
                 walltime=_key(spec, "walltime"), runtime=runtime)


def _key(spec: ProductionSpec | Mapping[str, Any], key: str) -> Any:
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key)


def offers(spec: ProductionSpec | Mapping[str, Any], sites: Mapping[str, Any],
           only_site: str | None = None) -> dict[str, PilotShape]:
    """The pilot shapes a job of `spec` may get, by `site/queue`: those of the enabled
    sites it allows (only `only_site`, when given) that serve its queue."""
    queue, allowed = _key(spec, "queue") or "default", _key(spec, "sites") or []
    return {f"{name}/{queue}": site.pilot for name, site in sites.items()
            if site.enabled and queue in site.queues and (not allowed or name in allowed)
            and (only_site is None or name == only_site)}


def no_fit(needs: Needs, shapes: Mapping[str, PilotShape]) -> tuple[str, str] | None:
    """(field, why) when no pilot of `shapes` (by `site/queue`) can hold a job of `needs`,
    naming the need and the largest pilot on offer; None when one can, or none is on offer
    (nothing is known to compare with)."""
    if not shapes or any(shape.misfit(needs) is None for shape in shapes.values()):
        return None
    if not any(shape.runs(needs.runtime) for shape in shapes.values()):
        return "container.runtime", (
            f"container.runtime: {needs.runtime} is offered by no allowed site: "
            + "; ".join(f"{label} offers {shape.runtime_summary()}"
                        for label, shape in shapes.items()))
    shapes = {label: shape for label, shape in shapes.items() if shape.runs(needs.runtime)}
    for need in NEEDS:
        asked = getattr(needs, need)
        offered = [(shape.offer(need), label) for label, shape in shapes.items()]
        if asked is None or any(value is None for value, _ in offered):
            continue  # some pilot's memory is not declared: it takes any
        largest, label = max(offered, key=lambda item: item[0] or 0)
        assert largest is not None
        if asked > largest:
            if need == "walltime":
                return need, (f"walltime: {amount(need, asked)} fits no site; the largest "
                              f"pilots give a job at most {amount(need, largest)} ({label}: "
                              "pilot walltime minus its drain margin)")
            return need, (f"{need}: {amount(need, asked)} fits no site; the largest pilots "
                          f"offer {amount(need, largest)} ({label})")
    # each need fits some pilot, but no pilot all of them
    first = next(iter(shapes.values())).misfit(needs) or NEEDS[0]
    asked = ", ".join(amount(need, getattr(needs, need)) for need in NEEDS
                      if getattr(needs, need) is not None)
    return first, (f"{first}: {asked} together fit no site's pilots: "
                   + "; ".join(f"{label} offers {shape.summary()}"
                               for label, shape in shapes.items()))


def longest_walltime(spec: ProductionSpec, sites: Mapping[str, Any]) -> int | None:
    """The longest walltime a job of `spec` can get from the pilots of the enabled sites it
    allows in its queue (a pilot keeps its drain margin), or None if no such site."""
    room = [shape.longest_job for shape in offers(spec, sites).values()]
    return max(room) if room else None


def check_placement(spec: ProductionSpec, where: str, sites: Mapping[str, Any]) -> None:
    """Checks that the jobs can run where they go: a pilot of an allowed site can hold
    their cores, memory and walltime, and every file named under `${spec_dir}` exists."""
    misfit = no_fit(needs_of(spec), offers(spec, sites))
    if misfit is not None:
        field, why = misfit
        raise SpecError(f"{where}: {why}", field=field)
    steps = ((f"post[{n}]", text) for n, text in enumerate(spec.post))
    for field, text in (*templates(spec), *steps):
        for match in SPEC_DIR_PATH.finditer(text):
            if text[match.end():match.end() + 1] == "$":
                continue  # the rest of the name is only known per job
            _check_spec_file(spec, where, field, match.group(1) or "")


def _check_spec_file(spec: ProductionSpec, where: str, field: str, rest: str) -> None:
    named = "${spec_dir}" + rest
    if not spec.spec_dir:
        raise SpecError(f"{where}: {field}: names {named}, but the request came with no "
                        f"spec_dir (its directory at the tower): {SHIPPING}", field=field)
    path = Path(spec.spec_dir + rest)
    if not path.exists():
        raise SpecError(f"{where}: {field}: {named} is {path}, which does not exist at the "
                        f"tower (spec_dir is the directory of the request file that set it, "
                        f"or of the request that inherits it): {SHIPPING}", field=field)
