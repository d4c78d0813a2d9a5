"""Wake-ups across processes on PostgreSQL: a claim's NOTIFY reaches every listening tower
at commit, and a rolled-back transaction wakes nobody."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_home
from tower.config import load_config
from tower.loops import wakeups
from tower.model.db import transaction
from tower.runtime import Runtime


@pytest.fixture
def towers(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes on one database, as the API's process and the loops' process."""
    config = load_config(write_home(tmp_path / "home", postgres_url))
    api, loops = Runtime.open(config), Runtime.open(config)
    yield api, loops
    api.close()
    loops.close()


def test_a_notify_wakes_the_loop_in_the_other_process_at_commit(
        towers: tuple[Runtime, Runtime]) -> None:
    api, loops = towers
    stop = threading.Event()
    listener = wakeups.listen(loops, stop)
    assert listener is not None
    try:
        alarm = loops.alarm("matchmaker")
        # a listener that is not listening yet would miss the first wake: retry until heard
        for _ in range(50):
            with transaction(api.engine) as session:
                wakeups.wake(api, session, "matchmaker", "stager")
            if alarm.wait(0.2):
                break
        assert alarm.is_set() and loops.alarm("stager").is_set()
        assert not loops.alarm("monitor").is_set()
        alarm.clear()
        # a transaction that rolls back says nothing
        with pytest.raises(RuntimeError), transaction(api.engine) as session:
            wakeups.wake(api, session, "matchmaker")
            raise RuntimeError("the claim failed")
        assert not alarm.wait(1.0)
    finally:
        stop.set()
        listener.join(timeout=5)
    assert not listener.is_alive()
