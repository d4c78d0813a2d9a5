"""Retry policies: the rules, their limits and budgets, and refusing malformed policy files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tower.errors import ConfigError
from tower.retries.outcomes import INFRASTRUCTURE, Outcome
from tower.retries.policy import Action, Ended, Policy, decide, load_policies

SHIPPED = load_policies(None, Path("."))
STANDARD = SHIPPED["standard"]


def fail(outcome: Outcome, code: int | None = None, signal: int | None = None,
         site: str = "a") -> Ended:
    return Ended(outcome, code, signal, site)


def policy(**body: Any) -> Policy:
    return load_policies({"p": body}, Path("."))["p"]


def test_the_standard_policy_fails_a_payload_error_after_three_tries_with_growing_waits() -> None:
    history: list[Ended] = []
    decisions = []
    for _ in range(3):
        history.append(fail(Outcome.EXIT_CODE, 1))
        decisions.append(decide(STANDARD, history))
    assert [d.action for d in decisions] == [Action.RETRY, Action.RETRY, Action.FAIL]
    assert [d.delay for d in decisions[:2]] == [30, 60]
    assert decisions[2].rule == "payload" and "payload failures 3 of 3" in decisions[2].reason


def test_infrastructure_failures_draw_on_their_own_budget() -> None:
    # two payload failures and seven node failures: the job is still retried
    history = [fail(Outcome.EXIT_CODE, 1)] * 2 + [fail(Outcome.NODE_FAILURE)] * 7
    decision = decide(STANDARD, history)
    assert decision.action is Action.RETRY_ELSEWHERE
    # the eighth node failure exhausts the sites' budget
    assert decide(STANDARD, [*history[2:], fail(Outcome.NODE_FAILURE)]).action is Action.FAIL
    # and a payload failure after the node failures still has its own third try left
    assert decide(STANDARD, [fail(Outcome.NODE_FAILURE)] * 5 + [fail(Outcome.EXIT_CODE, 2)]
                  ).action is Action.RETRY


def test_every_shipped_infrastructure_class_is_retried() -> None:
    for outcome in INFRASTRUCTURE:
        assert decide(STANDARD, [fail(outcome)]).action.retries, outcome


def test_walltime_and_memory_are_grown_by_their_rules() -> None:
    walltime = decide(STANDARD, [fail(Outcome.WALLTIME)])
    memory = decide(STANDARD, [fail(Outcome.OUT_OF_MEMORY)])
    assert (walltime.action, walltime.walltime_factor, walltime.max_walltime) == (
        Action.RETRY, 2.0, 7 * 24 * 3600)
    assert (memory.action, memory.memory_factor) == (Action.RETRY, 1.5)


def test_exit_code_values_and_ranges_and_signal_names_match() -> None:
    p = policy(rules=[
        {"name": "transient", "match": {"exit_codes": [75, "64-70"]}, "action": "retry",
         "max_attempts": 5},
        {"name": "segfault", "match": {"signals": ["SEGV", 6]}, "action": "hold"},
        {"name": "rest", "action": "fail"},
    ], payload_failures=10)
    assert decide(p, [fail(Outcome.EXIT_CODE, 75)]).rule == "transient"
    assert decide(p, [fail(Outcome.EXIT_CODE, 66)]).rule == "transient"
    assert decide(p, [fail(Outcome.EXIT_CODE, 71)]).rule == "rest"
    assert decide(p, [fail(Outcome.SIGNAL, signal=11)]).action is Action.HOLD
    assert decide(p, [fail(Outcome.SIGNAL, signal=6)]).rule == "segfault"
    assert decide(p, [fail(Outcome.SIGNAL, signal=9)]).rule == "rest"


def test_a_rules_own_maximum_counts_only_the_attempts_it_matched() -> None:
    p = policy(payload_failures=20, when_exhausted="hold", rules=[
        {"name": "transient", "match": {"exit_codes": [75]}, "action": "retry",
         "max_attempts": 2},
        {"match": {"class": "exit_code"}, "action": "retry"},
    ])
    others = [fail(Outcome.EXIT_CODE, 1)] * 4
    assert decide(p, [*others, fail(Outcome.EXIT_CODE, 75)]).action is Action.RETRY
    exhausted = decide(p, [*others, fail(Outcome.EXIT_CODE, 75), fail(Outcome.EXIT_CODE, 75)])
    assert (exhausted.action, exhausted.rule) == (Action.HOLD, "transient")
    assert "the rule allows 2" in exhausted.reason


def test_the_global_maximum_and_a_productions_own_cap() -> None:
    p = policy(max_attempts=4, infrastructure_failures=50,
               rules=[{"match": {"class": "preempted"}, "action": "retry"}])
    assert decide(p, [fail(Outcome.PREEMPTED)] * 3).action is Action.RETRY
    assert decide(p, [fail(Outcome.PREEMPTED)] * 4).action is Action.FAIL
    assert decide(p, [fail(Outcome.PREEMPTED)] * 2, cap=2).action is Action.FAIL


def test_a_passive_rule_is_reported_but_the_next_rule_acts() -> None:
    p = policy(rules=[
        {"name": "trial", "match": {"class": "exit_code"}, "action": "hold", "passive": True},
        {"name": "live", "match": {"class": "exit_code"}, "action": "retry"},
    ])
    decision = decide(p, [fail(Outcome.EXIT_CODE, 3)])
    assert (decision.action, decision.rule) == (Action.RETRY, "live")
    assert [(d.action, d.rule) for d in decision.passive] == [(Action.HOLD, "trial")]


def test_no_matching_rule_takes_the_policys_otherwise() -> None:
    p = policy(otherwise="hold", rules=[{"match": {"class": "preempted"}, "action": "retry"}])
    decision = decide(p, [fail(Outcome.SIGNAL, signal=9)])
    assert (decision.action, decision.rule) == (Action.HOLD, "otherwise")


def test_backoff_grows_with_the_attempt_number_up_to_its_maximum() -> None:
    p = policy(backoff={"initial": "10s", "factor": 3, "max": "1m"},
               payload_failures=10, rules=[{"action": "retry"}])
    delays = [decide(p, [fail(Outcome.EXIT_CODE, 1)] * n).delay for n in range(1, 5)]
    assert delays == [10, 30, 60, 60]


def test_extends_takes_the_parents_keys_and_replaces_rules_whole() -> None:
    p = load_policies({"quick": {"extends": "standard", "backoff": {"initial": 0}}},
                      Path("."))["quick"]
    assert p.rules == STANDARD.rules and p.payload_failures == STANDARD.payload_failures
    assert decide(p, [fail(Outcome.EXIT_CODE, 1)]).delay == 0


def test_a_policy_file_joins_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump({"policies": {
        "lz": {"extends": "strict", "payload_failures": 2}}}))
    policies = load_policies("policies.yaml", tmp_path)
    assert set(policies) == {"standard", "strict", "lz"}
    assert decide(policies["lz"], [fail(Outcome.EXIT_CODE, 1)]).action is Action.HOLD


@pytest.mark.parametrize(("body", "key", "words"), [
    ({"rules": [{"action": "retry_somewhere"}]}, "policies.bad.rules.0.action", "retry_here"),
    ({"rules": [{"match": {"exit_codes": ["64-"]}, "action": "retry"}]},
     "policies.bad.rules.0.match.exit_codes", "not an exit code"),
    ({"rules": [{"match": {"exit_codes": [300]}, "action": "retry"}]},
     "policies.bad.rules.0.match.exit_codes", "0..255"),
    ({"rules": [{"match": {"signals": ["SIGNOPE"]}, "action": "retry"}]},
     "policies.bad.rules.0.match.signals", "not a signal"),
    ({"rules": [{"match": {"class": "success"}, "action": "retry"}]},
     "policies.bad.rules.0.match.class", "not a failure"),
    ({"rules": [{"match": {"class": "walltime"}, "action": "retry", "walltime_factor": 0.5}]},
     "policies.bad.rules.0.walltime_factor", "greater than 1"),
    ({"rules": [{"action": "fail", "max_attempts": 3}]}, "policies.bad.rules.0",
     "max_attempts only applies to a retry action"),
    ({"rules": [{"match": {"class": "signal", "exit_codes": [1]}, "action": "retry"}]},
     "policies.bad.rules.0.match", "exit_codes only match"),
    ({"payload_failures": 0}, "policies.bad.payload_failures", "greater than 0"),
    ({"retries": 3}, "policies.bad.retries", "unknown key"),
    ({"extends": "nothing"}, "policies.bad.extends", "no policy named 'nothing'"),
    ({"extends": "bad"}, "policies.bad.extends", "cycle"),
])
def test_a_malformed_policy_is_refused_naming_the_key(body: dict[str, Any], key: str,
                                                      words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policies({"bad": body}, Path("."))
    assert key in str(caught.value) and words in str(caught.value)


def test_a_policy_file_that_is_not_a_mapping_of_policies_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="p.yaml: policies: expected a mapping"):
        load_policies("p.yaml", tmp_path)


def test_preemption_is_not_a_sign_of_a_broken_site() -> None:
    from tower.retries.outcomes import SITE_FAULTS

    assert Outcome.PREEMPTED not in SITE_FAULTS and Outcome.PILOT_KILLED not in SITE_FAULTS
    assert {Outcome.NODE_FAILURE, Outcome.PILOT_VANISHED, Outcome.LOST_HEARTBEAT} <= SITE_FAULTS
