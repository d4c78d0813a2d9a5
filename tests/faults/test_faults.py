"""The fault suite: each scenario of tests/faults/scenarios.py against a real tower on
PostgreSQL and RabbitMQ, then the ledger. `make test` plays each once, short; `make faults`
plays the long ones FAULT_RUNS times with new seeds and prints the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import SCENARIOS, Result, play

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def assert_ledger_holds(result: Result, long: bool) -> None:
    replay = (f"FAULT_RUNS=1 GRIDTOWER_FAULT_SEED={result.seed} pytest tests/faults "
              f"-k {result.scenario}" + (" -m faults_long" if long else ""))
    assert not result.violations, (
        f"seed {result.seed}: the ledger of {result.scenario} does not hold "
        f"({len(result.violations)} violations; replay with {replay}):\n"
        + "\n".join(result.violations))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fault(scenario: str, seed: int, tmp_path: Path, postgres_url: str,
               fault_amqp_url: str, record: list[Result]) -> None:
    result = play(scenario, tmp_path, postgres_url, fault_amqp_url, seed, run=1, long=False)
    record.append(result)
    assert_ledger_holds(result, long=False)


@pytest.mark.faults_long
@pytest.mark.timeout(400)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fault_long(scenario: str, run: int, seed: int, tmp_path: Path, postgres_url: str,
                    fault_amqp_url: str, record: list[Result]) -> None:
    result = play(scenario, tmp_path, postgres_url, fault_amqp_url, seed, run=run, long=True)
    record.append(result)
    assert_ledger_holds(result, long=True)
