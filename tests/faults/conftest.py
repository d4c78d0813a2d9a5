"""The fault suite's runs and its table: FAULT_RUNS (default 3) runs of each long scenario,
each with a new seed; every scenario played adds a row to the table printed at the end
(and written to ./faults-report.md)."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RABBITMQ, missing_service, rabbitmq_reachable, rabbitmqctl
from tests.faults.scenarios import Result

RESULTS = pytest.StashKey[list[Result]]()
REPORT = Path("faults-report.md")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "run" in metafunc.fixturenames:
        # an environment variable, not an option: this conftest is not loaded early enough
        # to add one when pytest is given only `tests`
        runs = int(os.environ.get("FAULT_RUNS", "3"))
        metafunc.parametrize("run", range(1, runs + 1))


@pytest.fixture
def seed() -> int:
    """GRIDTOWER_FAULT_SEED to replay a run, else a new one."""
    given = os.environ.get("GRIDTOWER_FAULT_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**31)


@pytest.fixture
def fault_amqp_url() -> Iterator[str]:
    """A vhost and a user of this scenario's own: the shared test user's password is
    changed by every pytest session that starts, which would cut a scenario's tower off
    its broker when another session starts beside it (a fault nobody meant to inject)."""
    if not rabbitmq_reachable() or shutil.which("rabbitmqctl") is None:
        missing_service(f"RabbitMQ at {RABBITMQ} with rabbitmqctl")
    name = f"gt-faults-{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(12)
    rabbitmqctl("add_user", name, password)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, name, ".*", ".*", ".*")
    yield f"amqp://{name}:{password}@{RABBITMQ}/{name}"
    rabbitmqctl("delete_vhost", name)
    rabbitmqctl("delete_user", name)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> list[Result]:
    """Where a test puts its result for the table."""
    results: list[Result] = request.config.stash[RESULTS]
    return results


def table(results: list[Result]) -> str:
    lines = ["| scenario | run | seed | faults injected | done | failed | held | other | ledger |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        faults = ", ".join(f"{what} {n}" for what, n in sorted(r.faults.items())) or "none"
        other = sum(n for state, n in r.counts.items()
                    if state not in ("done", "failed", "held"))
        verdict = ("holds" if not r.violations else
                   f"{len(r.violations)} violations: {r.violations[0]}")
        lines.append(f"| {r.scenario} | {r.run} | {r.seed} | {faults} | "
                     f"{r.counts.get('done', 0)} | {r.counts.get('failed', 0)} | "
                     f"{r.counts.get('held', 0)} | {other} | {verdict} |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(RESULTS, [])
    if not results:
        return
    report = table(results)
    terminalreporter.section("fault suite")
    terminalreporter.write(report)
    details = [f"\n### {r.scenario} run {r.run} (seed {r.seed})\n" +
               "".join(f"- {v}\n" for v in r.violations) for r in results if r.violations]
    REPORT.write_text("# Fault suite\n\n" + report + "".join(details))
    terminalreporter.write_line(f"written to {REPORT.resolve()}")
