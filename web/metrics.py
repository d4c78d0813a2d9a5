"""`/metrics` in the Prometheus text format, read from the database at each scrape.

Nothing is kept between scrapes: a collector yields fresh gauges and counters
each time, so two tower processes behind one address report the same numbers.
Jobs by state and events done per production still running (a finished or cancelled
production drops out, so the production label stays bounded; productions are counted by
phase), pilots by state per site queue, backlog and broker depth per site queue, staged
outputs and their bytes (and those still waiting), attempts by outcome class per site,
and the age of each loop's last cycle (from the database, whichever process ran it).

Two families are this process's own, not the database's: its loops' cycles (count,
errors, seconds) and its answers' latency (web.latency). `tower run` serves the API in
the process that runs the loops; behind a proxy, each process is scraped as its own target.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlmodel import Session, col

from tower.auth.access import Permission
from tower.loops import daemon, liveness
from tower.loops.site_status import site_queues
from tower.management import productions, progress
from tower.model import reads, tally
from tower.model.db import driver_connection
from tower.model.models import Output
from tower.runtime import Runtime
from web.auth import needs
from web.latency import LATENCY

#: Phases whose productions are labelled one by one.
LIVE = ("active", "paused", progress.WAITING)

metrics = Blueprint("metrics", __name__)


class TowerCollector:
    """Yields the tower's metrics from the database (and the broker) at each collect()."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        with Session(self.runtime.engine) as session:
            yield from self._jobs(session)
            yield from self._outputs(session)
            yield from self._attempts(session)
        yield from self._sites()
        yield from self._loops()

    def _jobs(self, session: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("gridtower_jobs", "Jobs by state, of productions still "
                                 "running", labels=["production", "state"])
        events = GaugeMetricFamily("gridtower_events_done", "Events done, of productions "
                                   "still running", labels=["production"])
        phases = GaugeMetricFamily("gridtower_productions", "Productions by phase",
                                   labels=["phase"])
        chosen = {production.id: production for production in
                  productions.all_productions(session)}
        counted: Counter[str] = Counter()
        waiting = reads.waiting_for_upstream(driver_connection(session), [
            production.name for production in chosen.values() if production.state == "active"])
        for production_id, states in tally.counts(session).items():
            production = chosen[production_id]
            phase = progress.phase(production.state, {state: count.jobs for state, count
                                                      in states.items()},
                                   waiting=production.name in waiting)
            counted[phase] += 1
            if phase not in LIVE:
                continue
            for state, count in states.items():
                jobs.add_metric([production.name, state], count.jobs)
            done = states.get("done")
            events.add_metric([production.name], done.events if done else 0)
        for phase, number in sorted(counted.items()):
            phases.add_metric([phase], number)
        yield from (jobs, events, phases)

    def _loops(self) -> Iterator[Metric]:
        age = GaugeMetricFamily("gridtower_loop_last_cycle_age_seconds", "Seconds since a "
                                "loop last ended a cycle, in any tower process",
                                labels=["loop"])
        now = time.time()
        for name, ended in sorted(liveness.recorded_ends(self.runtime).items()):
            age.add_metric([name], max(0.0, now - ended))
        cycles = CounterMetricFamily("gridtower_loop_cycles", "Cycles of a loop in this "
                                     "process", labels=["loop"])
        errors = CounterMetricFamily("gridtower_loop_errors", "Cycles of a loop in this "
                                     "process that failed", labels=["loop"])
        seconds = CounterMetricFamily("gridtower_loop_cycle_seconds", "Seconds a loop's "
                                      "cycles took in this process", labels=["loop"])
        last = GaugeMetricFamily("gridtower_loop_last_cycle_seconds", "Seconds the last "
                                 "cycle of a loop took in this process", labels=["loop"])
        for name, stats in sorted(daemon.STATS.items()):
            cycles.add_metric([name], stats.cycles)
            errors.add_metric([name], stats.errors)
            seconds.add_metric([name], stats.seconds)
            last.add_metric([name], stats.last_seconds)
        yield from (age, cycles, errors, seconds, last)

    def _outputs(self, session: Session) -> Iterator[Metric]:
        staged = CounterMetricFamily("gridtower_outputs_staged", "Outputs staged out and "
                                     "cataloged", labels=[])
        staged_bytes = CounterMetricFamily("gridtower_outputs_staged_bytes", "Bytes of the "
                                           "outputs staged out", labels=[])
        waiting = GaugeMetricFamily("gridtower_outputs_waiting", "Outputs waiting at their "
                                    "sites to be staged out", labels=[])
        rows = dict(session.execute(select(col(Output.staged), func.count())
                                    .group_by(col(Output.staged))).all())
        total = session.execute(select(func.coalesce(func.sum(col(Output.size)), 0))
                                .where(col(Output.staged).is_(True))).scalar_one()
        staged.add_metric([], rows.get(True, 0))
        staged_bytes.add_metric([], int(total))
        waiting.add_metric([], rows.get(False, 0))
        yield from (staged, staged_bytes, waiting)

    def _attempts(self, session: Session) -> Iterator[Metric]:
        attempts = CounterMetricFamily("gridtower_attempts", "Ended attempts by outcome class",
                                       labels=["site", "outcome"])
        by_class: Counter[tuple[str, str]] = Counter()
        for (_, site, kind, _), count in tally.totals(session).items():
            if kind != tally.DONE:
                by_class[(site, kind)] += count
        for (site, kind), count in sorted(by_class.items()):
            attempts.add_metric([site, kind], count)
        yield attempts

    def _sites(self) -> Iterator[Metric]:
        rows, _ = site_queues(self.runtime)
        pilots = GaugeMetricFamily("gridtower_pilots", "Pilots by state (done and lost: "
                                   "in the last day)", labels=["site", "queue", "state"])
        backlog = GaugeMetricFamily("gridtower_backlog", "Jobs held at a site queue",
                                    labels=["site", "queue"])
        bound = GaugeMetricFamily("gridtower_backlog_bound", "The bound on a site queue's "
                                  "backlog", labels=["site", "queue"])
        depth = GaugeMetricFamily("gridtower_broker_depth", "Messages in the broker for a "
                                  "site queue", labels=["site", "queue"])
        waiting = GaugeMetricFamily("gridtower_jobs_waiting", "Defined jobs a site queue "
                                    "could take", labels=["site", "queue"])
        for row in rows:
            key = [row["site"], row["queue"]]
            for state, count in row["pilots"].items():
                pilots.add_metric([*key, state], count)
            backlog.add_metric(key, row["backlog"])
            waiting.add_metric(key, row["waiting"])
            if row["bound"] is not None:
                bound.add_metric(key, row["bound"])
            if row["broker"] is not None:
                depth.add_metric(key, row["broker"])
        yield from (pilots, backlog, bound, depth, waiting)


@metrics.get("/metrics")
@needs(Permission.READ)
def scrape() -> Any:
    """The tower's metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TowerCollector(current_app.extensions["gridtower"]))
    registry.register(LATENCY)
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
