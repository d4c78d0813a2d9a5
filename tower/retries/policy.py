"""Retry policies: named, ordered rules that decide what happens after a failed attempt.

A policy is pure: :func:`decide` takes the attempts a job has had (the one
that just ended last) and returns a :class:`Decision`; `tower.retries.retry` applies
it to the database. The shipped policies live in `policies.yaml` beside this
module; a tower adds its own in `retry.policies` of tower.yaml (a file, or a
mapping), each a new policy or one that `extends` another.

Rules are tried in order; the first that matches the attempt and is not
passive decides. A passive rule's decision is recorded and logged, and the
next rules are tried: a new rule can be watched on live traffic before it
acts. Every retry is bounded three ways: the rule's own `max_attempts` (the
attempts it matched), the budget of its blame (the payload's own failures,
or the sites'), and the policy's `max_attempts` of any kind.
"""

from __future__ import annotations

import enum
import signal as signals
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from sites.schema import Megabytes, Seconds, Strict, build, read_yaml
from tower.errors import ConfigError
from tower.retries.outcomes import INFRASTRUCTURE, NOT_FAILURES, Outcome, blame

#: The policy a production gets when neither it nor tower.yaml names one.
STANDARD = "standard"


class Action(enum.StrEnum):
    RETRY = "retry"                      # anywhere the production may run
    RETRY_HERE = "retry_here"            # at the site where the attempt ran
    RETRY_ELSEWHERE = "retry_elsewhere"  # at any site but those where it failed this way
    HOLD = "hold"                        # wait for a human (`tower release`)
    FAIL = "fail"

    @property
    def retries(self) -> bool:
        return self not in (Action.HOLD, Action.FAIL)


Exhausted = Literal["fail", "hold"]


@dataclass(frozen=True)
class Ended:
    """The facts of one ended attempt that rules match on."""

    outcome: Outcome
    exit_code: int | None = None
    signal: int | None = None
    site: str | None = None

    def describe(self) -> str:
        if self.outcome is Outcome.EXIT_CODE and self.exit_code is not None:
            return f"exit code {self.exit_code}"
        if self.outcome is Outcome.SIGNAL and self.signal is not None:
            return f"signal {self.signal}"
        return str(self.outcome)


class Backoff(Strict):
    #: Wait before the second attempt.
    initial: Seconds = Field(default=30, ge=0)
    #: Each further attempt waits this many times longer ...
    factor: float = Field(default=2.0, ge=1.0, le=100.0)
    #: ... up to this.
    max: Seconds = Field(default=3600, ge=0)

    def delay(self, attempts: int) -> int:
        """Seconds to wait after the `attempts`-th attempt ended."""
        return int(min(self.initial * self.factor ** max(attempts - 1, 0), self.max))


def _exit_code_range(value: int | str) -> tuple[int, int]:
    text = str(value).strip()
    low, dash, high = text.partition("-")
    try:
        bounds = (int(low), int(high) if dash else int(low))
    except ValueError:
        raise ValueError(f"{value!r} is not an exit code or a range such as 64-78") from None
    if not 0 <= bounds[0] <= bounds[1] <= 255:
        raise ValueError(f"{value!r}: exit codes are 0..255, low to high")
    return bounds


def _signal_number(value: int | str) -> int:
    if isinstance(value, int):
        number = value
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            number = int(signals.Signals[name])
        except KeyError:
            raise ValueError(f"{value!r} is not a signal name or number") from None
    if not 1 <= number <= 64:
        raise ValueError(f"{value!r}: signals are 1..64")
    return number


class Match(Strict):
    """What a rule matches; every given key must match (an empty match takes all)."""

    model_config = Strict.model_config | {"populate_by_name": True}

    classes: list[Outcome] = Field(default_factory=list, alias="class")
    #: Exit codes and ranges ("64-78"); implies class exit_code.
    exit_codes: list[tuple[int, int]] = Field(default_factory=list)
    #: Signal numbers or names (9, KILL, SIGSEGV); implies class signal.
    signals: list[int] = Field(default_factory=list)
    #: Sites where the attempt ran.
    sites: list[str] = Field(default_factory=list)

    @field_validator("classes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("classes")
    @classmethod
    def _failures_only(cls, value: list[Outcome]) -> list[Outcome]:
        for outcome in value:
            if outcome in NOT_FAILURES:
                raise ValueError(f"{outcome} is not a failure; rules never see it")
        return value

    @field_validator("exit_codes", mode="before")
    @classmethod
    def _ranges(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        return [_exit_code_range(item) for item in items]

    @field_validator("signals", mode="before")
    @classmethod
    def _signals(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        return [_signal_number(item) for item in items]

    @model_validator(mode="after")
    def _consistent(self) -> Match:
        if self.exit_codes and self.classes and Outcome.EXIT_CODE not in self.classes:
            raise ValueError("exit_codes only match attempts of class exit_code")
        if self.signals and self.classes and Outcome.SIGNAL not in self.classes:
            raise ValueError("signals only match attempts of class signal")
        return self

    def matches(self, ended: Ended) -> bool:
        if self.classes and ended.outcome not in self.classes:
            return False
        if self.exit_codes and not (ended.outcome is Outcome.EXIT_CODE
                                    and ended.exit_code is not None
                                    and any(low <= ended.exit_code <= high
                                            for low, high in self.exit_codes)):
            return False
        if self.signals and not (ended.outcome is Outcome.SIGNAL
                                 and ended.signal in self.signals):
            return False
        return not self.sites or ended.site in self.sites


class Rule(Strict):
    name: str | None = Field(default=None, max_length=100)
    match: Match = Match()
    action: Action
    #: Attempts this rule may match before it gives up (then `when_exhausted`).
    max_attempts: int | None = Field(default=None, gt=0, le=100)
    #: Retry with the job's walltime / memory multiplied by this (capped by the max_ keys).
    walltime_factor: float | None = Field(default=None, gt=1.0, le=100.0)
    memory_factor: float | None = Field(default=None, gt=1.0, le=100.0)
    max_walltime: Seconds | None = Field(default=None, gt=0)
    max_memory: Megabytes | None = Field(default=None, gt=0)
    backoff: Backoff | None = None
    when_exhausted: Exhausted | None = None
    #: Decide, record and log, but do not act: the next rule acts.
    passive: bool = False

    @model_validator(mode="after")
    def _retry_keys(self) -> Rule:
        if not self.action.retries:
            for key in ("max_attempts", "walltime_factor", "memory_factor", "max_walltime",
                        "max_memory", "backoff", "when_exhausted"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} only applies to a retry action, not {self.action}")
        return self


class Policy(Strict):
    #: Another policy whose keys this one takes where it gives none (rules are replaced whole).
    extends: str | None = None
    description: str = ""
    #: Attempts of a job, whatever ended them.
    max_attempts: int = Field(default=10, gt=0, le=100)
    #: Failures of the payload itself (exit code, signal, walltime, memory, missing output).
    payload_failures: int = Field(default=3, gt=0, le=100)
    #: Failures of the sites (preemption, node failure, lost pilot, stage-out, ...).
    infrastructure_failures: int = Field(default=8, gt=0, le=100)
    backoff: Backoff = Backoff()
    #: What a retry becomes when a limit is reached.
    when_exhausted: Exhausted = "fail"
    #: What happens to a failure no rule matches.
    otherwise: Action = Action.FAIL
    rules: list[Rule] = Field(default_factory=list)

    def rule_name(self, index: int) -> str:
        return self.rules[index].name or f"rule {index + 1}"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: The rule that decided (its name, or "rule N"), or "otherwise".
    rule: str
    reason: str
    #: Seconds before the job may be matched again.
    delay: int = 0
    walltime_factor: float | None = None
    memory_factor: float | None = None
    max_walltime: int | None = None
    max_memory: int | None = None
    #: What passive rules that matched before this one would have decided.
    passive: tuple[Decision, ...] = field(default=())


def decide(policy: Policy, history: Sequence[Ended], cap: int | None = None) -> Decision:
    """What to do after the last attempt of `history` (the job's attempts since its budget
    was last reset, oldest first). `cap` lowers the policy's max_attempts (a production's
    own retry.max_attempts)."""
    ended = history[-1]
    would: list[Decision] = []
    for index, rule in enumerate(policy.rules):
        if not rule.match.matches(ended):
            continue
        decision = _apply(policy, index, history, cap)
        if not rule.passive:
            return _with_passive(decision, would)
        would.append(decision)
    return _with_passive(Decision(policy.otherwise, "otherwise",
                                  f"{ended.describe()}: no rule matches: {policy.otherwise}"),
                         would)


def _with_passive(decision: Decision, would: list[Decision]) -> Decision:
    return Decision(**{**decision.__dict__, "passive": tuple(would)})


def _apply(policy: Policy, index: int, history: Sequence[Ended], cap: int | None) -> Decision:
    rule, name, ended = policy.rules[index], policy.rule_name(index), history[-1]
    what = f"{ended.describe()}, rule {name!r}"
    if not rule.action.retries:
        return Decision(rule.action, name, f"{what}: {rule.action}")
    budget_kind = blame(ended.outcome)
    budget = (policy.infrastructure_failures if ended.outcome in INFRASTRUCTURE
              else policy.payload_failures)
    used = sum(1 for past in history if blame(past.outcome) == budget_kind)
    limits = [
        (rule.max_attempts, sum(1 for past in history if rule.match.matches(past)),
         f"the rule allows {rule.max_attempts} such attempts"),
        (budget, used, f"{budget_kind} failures {used} of {budget}"),
        (min(policy.max_attempts, cap or policy.max_attempts), len(history),
         f"attempts {len(history)} of {min(policy.max_attempts, cap or policy.max_attempts)}"),
    ]
    for limit, count, why in limits:
        if limit is not None and count >= limit:
            final = Action(rule.when_exhausted or policy.when_exhausted)
            return Decision(final, name, f"{what}: {why}: {final}")
    delay = (rule.backoff or policy.backoff).delay(len(history))
    grow = "".join(f", {key} x{factor:g}" for key, factor in
                   (("walltime", rule.walltime_factor), ("memory", rule.memory_factor)) if factor)
    return Decision(rule.action, name,
                    f"{what}: {rule.action} (attempt {len(history) + 1}{grow}) in {delay}s",
                    delay=delay, walltime_factor=rule.walltime_factor,
                    memory_factor=rule.memory_factor, max_walltime=rule.max_walltime,
                    max_memory=rule.max_memory)


# -- loading ---------------------------------------------------------------------------------

#: The longest chain of policies extending each other.
MAX_EXTENDS = 20


def shipped() -> dict[str, Any]:
    """The raw policies that ship with gridtower (`tower/retries/policies.yaml`)."""
    text = resources.files("tower.retries").joinpath("policies.yaml").read_text()
    return dict(yaml.safe_load(text)["policies"])


def load_policies(source: str | Mapping[str, Any] | None, home: Path) -> dict[str, Policy]:
    """The shipped policies plus the tower's own: `source` is a YAML file (relative to
    `home`) whose `policies` key maps names to policies, or such a mapping itself.
    Raises ConfigError naming the file and key of the first problem."""
    where, raw = "policies.yaml (shipped)", shipped()
    own: Any = {}
    if isinstance(source, str):
        path = (home / Path(source).expanduser()).resolve()
        where = str(path)
        document = read_yaml(path)
        if not isinstance(document, dict) or not isinstance(document.get("policies"), dict):
            raise ConfigError(f"{path}: policies: expected a mapping of policy names",
                              field="policies")
        own = document["policies"]
    elif source is not None:
        where, own = "tower.yaml retry.policies", dict(source)
    for name, body in own.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: policies.{name}: expected a mapping", field=name)
    raw.update(own)
    return {name: build(Policy, _flatten(name, raw, where), where, prefix=f"policies.{name}")
            for name in raw}


def _flatten(name: str, raw: Mapping[str, Any], where: str, seen: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    """A policy's keys with those of what it extends filled in."""
    if name in seen:
        raise ConfigError(f"{where}: policies.{name}.extends: forms a cycle: "
                          f"{' -> '.join((*seen, name))}", field=f"policies.{name}.extends")
    body = dict(raw[name])
    parent = body.get("extends")
    if parent is None:
        return body
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: policies.{name}.extends: expected a policy's name",
                          field=f"policies.{name}.extends")
    if len(seen) >= MAX_EXTENDS:
        raise ConfigError(f"{where}: policies.{name}.extends: a chain of more than "
                          f"{MAX_EXTENDS} policies", field=f"policies.{name}.extends")
    if parent not in raw:
        raise ConfigError(f"{where}: policies.{name}.extends: no policy named {parent!r} "
                          f"(known: {', '.join(sorted(raw))})", field=f"policies.{name}.extends")
    return {**_flatten(parent, raw, where, (*seen, name)), **body}
