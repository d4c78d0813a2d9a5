"""Reloading a runtime's sites and policies: what changed is said, a bad file changes
nothing, and a changed site's batch system is opened anew."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tower import reloading
from tower.config import load_config
from tower.runtime import Runtime


@pytest.fixture
def runtime(tower_yaml: Path) -> Iterator[Runtime]:
    opened = Runtime.open(load_config(tower_yaml))
    yield opened
    opened.close()


def edit(path: Path, change: object) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data))


def test_a_good_reload_says_what_changed_and_opens_a_changed_sites_batch_system_anew(
        runtime: Runtime, tower_yaml: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = runtime.config
    batch = runtime.batch_system("local")
    sites, home = tower_yaml.parent / "sites.yaml", tower_yaml.parent

    def add_and_change(data: dict) -> None:  # type: ignore[type-arg]
        data["sites"]["other"] = {**data["sites"]["local"], "scratch": str(home / "o")}
        data["sites"]["local"]["pilot"]["slots"] = 3

    edit(sites, add_and_change)
    edit(tower_yaml, lambda data: data["retry"]["policies"].update(
        strictest={"extends": "strict"}) or data["loops"].update(interval=9))
    caplog.set_level(logging.INFO, "tower.reloading")
    assert reloading.reload(runtime)
    assert runtime.batch_system("other") is not None
    assert set(runtime.config.sites) == {"local", "other"}
    assert runtime.config.sites["local"].pilot.slots == 3
    assert "strictest" in runtime.config.policies
    assert runtime.config.loops == before.loops  # only a restart applies loops.interval
    assert runtime.batch_system("local") is not batch
    messages = [record.getMessage() for record in caplog.records]
    assert ("reload: site added: other; site changed: local (pilot); "
            "policy added: strictest") in messages
    assert f"reload: {tower_yaml}: loops changed; it takes effect at the next start" \
        in messages


def test_a_bad_file_is_refused_logged_with_file_and_key_and_changes_nothing(
        runtime: Runtime, tower_yaml: Path, caplog: pytest.LogCaptureFixture) -> None:
    before, batch = runtime.config, runtime.batch_system("local")
    sites = tower_yaml.parent / "sites.yaml"
    edit(sites, lambda data: data["sites"]["local"]["pilot"].update(slots="many"))
    assert not reloading.reload(runtime)
    assert runtime.config is before and runtime.batch_system("local") is batch
    [refused] = [r for r in caplog.records if r.name == "tower.reloading"]
    assert refused.levelno == logging.ERROR
    assert str(sites) in refused.getMessage()
    assert "sites.local.pilot.slots" in refused.getMessage()


def test_a_policy_file_refused_keeps_the_policies_in_force(
        runtime: Runtime, tower_yaml: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = runtime.config
    edit(tower_yaml, lambda data: data["retry"]["policies"]["quick"].update(
        payload_failures=-2))
    assert not reloading.reload(runtime)
    assert runtime.config is before
    assert "tower.yaml retry.policies: policies.quick.payload_failures" in caplog.text


def test_a_site_with_work_in_flight_cannot_leave_sites_yaml(
        runtime: Runtime, tower_yaml: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tower.model import fleet
    from tower.model.db import transaction
    from tower.model.models import Pilot

    with transaction(runtime.engine) as session:
        session.add(Pilot(id="p1", site="local", batch_id="1", state="running"))
    before = runtime.config
    sites = tower_yaml.parent / "sites.yaml"
    edit(sites, lambda data: data["sites"].update(
        gone=data["sites"].pop("local")))  # renamed: local leaves
    assert not reloading.reload(runtime)
    assert runtime.config is before
    assert f"{sites}: sites.local: removed while 1 pilots are alive and 0 jobs" in caplog.text
    assert "enabled: false" in caplog.text
    with transaction(runtime.engine) as session:
        fleet.end(session, "p1", "drained")
    assert reloading.reload(runtime)  # once empty, it may go
    assert set(runtime.config.sites) == {"gone"}


def test_a_cycle_reads_one_configuration_whatever_a_reload_swaps_in_meanwhile(
        runtime: Runtime, tower_yaml: Path) -> None:
    from tower.loops import daemon

    seen = []

    def cycle(view: Runtime) -> int:
        before = view.config
        edit(tower_yaml.parent / "sites.yaml", lambda data: data["sites"]["local"][
            "pilot"].update(slots=5))
        assert reloading.reload(runtime)  # as the keeper thread would, mid-cycle
        seen.append((before, view.config, view.batch_system("local")))
        return 0

    daemon.run_guarded(daemon.Loop("probe", cycle), runtime)
    [(before, during, batch)] = seen
    assert during is before and before.sites["local"].pilot.slots == 2
    assert runtime.config.sites["local"].pilot.slots == 5  # the next cycle's
    # the cycle's batch system was the old settings'; the next cycle's has the new ones
    assert batch.site.pilot.slots == 2  # type: ignore[attr-defined]
    assert runtime.batch_system("local").site.pilot.slots == 5  # type: ignore[attr-defined]


def test_an_unchanged_site_keeps_its_batch_system_and_so_its_child_pilots(
        runtime: Runtime, tower_yaml: Path) -> None:
    batch = runtime.batch_system("local")
    edit(tower_yaml, lambda data: data["retry"].update(policy="strict"))
    assert reloading.reload(runtime)
    assert runtime.config.retry.policy == "strict"
    assert runtime.config.sites["local"] is not None
    assert runtime.batch_system("local") is batch
