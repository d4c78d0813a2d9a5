"""The tower's composition root: configuration, database, broker and backends, opened once."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from pilots.urls import redact
from sites.batch import BatchSystem, open_batch_system
from sites.config import SiteConfig
from sites.runner import Runner, open_runner
from tower.brokers.broker import Broker, open_broker
from tower.config import DestinationSettings, TowerConfig, site_storage
from tower.loops.demand import Demand
from tower.model.db import create_schema, make_engine
from transfer.base import Transfer, open_transfer


@dataclass
class Pulse:
    """One loop's pulse in this process (tower.loops.liveness reads it): its thread, and
    when (time.time()) its thread started, its current cycle started and its last one ended."""

    thread: threading.Thread | None = None
    born: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None


@dataclass
class Runtime:
    config: TowerConfig
    engine: Engine
    broker: Broker
    #: Identifies this tower process in leases, so two towers can share a database.
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: Per site: the `ssh` settings its runner was opened with, and the runner.
    _runners: dict[str, tuple[Any, Runner]] = field(default_factory=dict)
    #: Per site: the settings and runner its batch system was opened with, and the system.
    _batch: dict[str, tuple[SiteConfig, Runner, BatchSystem]] = field(default_factory=dict)
    _transfers: dict[str, Transfer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: One event per loop: set to run the loop's next cycle now instead of after its pause.
    _alarms: dict[str, threading.Event] = field(default_factory=dict)
    #: The loops this process runs, by name (none: an API-only process).
    pulses: dict[str, Pulse] = field(default_factory=dict)
    #: What each site queue's pilots took between two matchmaker cycles.
    demand: Demand = field(default_factory=Demand)
    #: Runners replaced after a reload changed their site's `ssh`: a cycle may still hold
    #: one, so they close with the runtime.
    _retired: list[Runner] = field(default_factory=list)

    @classmethod
    def open(cls, config: TowerConfig, create: bool = True) -> Runtime:
        """The tower on `config`'s database: a new one gets its tables; one of another
        schema revision raises SchemaError (`create=False`: nothing is checked or made, and
        nothing connects yet)."""
        engine = make_engine(config.database_url)
        if create:
            try:
                create_schema(engine, redact(config.database_url))
            except BaseException:
                engine.dispose()
                raise
        return cls(config, engine, open_broker(config.broker_url, engine, config.broker_options,
                                               str(config.path)))

    def alarm(self, loop: str) -> threading.Event:
        """The event `loop` pauses on between cycles."""
        with self._lock:
            return self._alarms.setdefault(loop, threading.Event())

    def wake(self, *loops: str) -> None:
        """Cut the pause of these loops short (in this process): there is work for them,
        such as room in a site's backlog after a claim, or outputs after a report."""
        for loop in loops:
            self.alarm(loop).set()

    def swap_config(self, config: TowerConfig) -> None:
        """Serve `config` from now on: one assignment, so a reader holds the old or the new
        whole; a site whose settings changed gets its batch system (and, if its `ssh`
        changed, its runner) opened anew at its next use."""
        self.config = config

    def snapshot(self) -> Runtime:
        """This runtime, its configuration fixed as it is now (the backends, caches and
        alarms shared): a loop's cycle reads one configuration throughout, whatever a
        reload swaps in meanwhile."""
        return copy.copy(self)

    def runner(self, site: str) -> Runner:
        """How commands run at `site` (locally or over SSH), one per site, reused while the
        site's `ssh` settings stay as they are."""
        settings = self.config.sites[site]
        held = self._runners.get(site)
        if held is None or held[0] != settings.ssh:
            if held is not None:
                self._retired.append(held[1])
            held = self._runners[site] = (settings.ssh, open_runner(settings))
        return held[1]

    def batch_system(self, site: str) -> BatchSystem:
        """The batch system of `site`, one instance per site, reused while the site's
        settings stay as they are (a local site's keeps its child pilots)."""
        settings, runner = self.config.sites[site], self.runner(site)
        held = self._batch.get(site)
        if held is None or held[1] is not runner or (held[0] is not settings
                                                     and held[0] != settings):
            held = self._batch[site] = (settings, runner, open_batch_system(settings, runner))
        return held[2]

    def transfer(self, destination: str) -> Transfer:
        """The backend of a named destination, one per destination, reused (it keeps its
        connections)."""
        return self._transfer(destination, self.config.storage.destinations.get(destination))

    def site_storage(self, site: str) -> Transfer:
        """Where `site`'s pilots leave outputs: over SFTP for a site reached by SSH."""
        return self._transfer(f"site {site}", site_storage(self.config.sites[site]))

    def log_directory(self) -> Transfer:
        """`monitor.logs_dir` in the tower's home, where attempts' logs too big for the
        database go without a `monitor.logs_destination`, as a local destination."""
        # keyed by the directory, so a reload that moves it opens the new one
        directory = self.config.home / self.config.monitor.logs_dir
        return self._transfer(f"logs {directory}", DestinationSettings(url=f"local:{directory}"))

    def _transfer(self, key: str, settings: DestinationSettings | None) -> Transfer:
        with self._lock:  # the stager's threads share one backend per destination
            if key not in self._transfers:
                if settings is None:
                    raise KeyError(key)
                self._transfers[key] = open_transfer(settings)
            return self._transfers[key]

    def close(self) -> None:
        for runner in [*(held[1] for held in self._runners.values()), *self._retired]:
            runner.close()
        for transfer in self._transfers.values():
            transfer.close()
        self.broker.close()
        self.engine.dispose()
