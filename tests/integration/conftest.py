"""A live tower for integration tests: its API served on loopback, its loops driven by the test."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tests.conftest import write_home
from tower.config import load_config
from tower.loops import daemon
from tower.management import productions
from tower.management.specs import ProductionSpec
from tower.model.db import transaction
from tower.model.models import Attempt, Job, Pilot, Production
from tower.model.states import JobState, move_jobs
from tower.retries import retry
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime
from web.server import start_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class LiveTower:
    def __init__(self, config_path: Path) -> None:
        config = load_config(config_path)
        self.server, url = start_server(config)
        config = config.model_copy(update={"api": config.api.model_copy(update={"url": url})})
        self.runtime = Runtime.open(config)
        self.server.bind(self.runtime)
        self.home = config_path.parent

    def submit(self, path: Path) -> None:
        with transaction(self.runtime.engine) as session:
            for item in productions.plan(session, path, self.runtime.config):
                productions.create(session, item)

    def drive(self, until: Callable[[], bool], timeout: float, pause: float = 0.2,
              without: tuple[str, ...] = ()) -> None:
        """Run tower cycles (every loop but those named in `without`) until `until()`
        holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                pytest.fail(f"not reached within {timeout}s: {self.counts()}")
            for loop in daemon.LOOPS:
                if loop.name not in without:
                    daemon.run_guarded(loop, self.runtime)
            time.sleep(pause)

    def cycles(self, count: int, pause: float = 0.2) -> None:
        """Run every loop `count` times (to show that nothing happens)."""
        for _ in range(count):
            daemon.run_cycle(self.runtime)
            time.sleep(pause)

    def counts(self) -> dict[str, int]:
        with Session(self.runtime.engine) as session:
            total: dict[str, int] = {}
            for states in productions.state_counts(session).values():
                for state, count in states.items():
                    total[state] = total.get(state, 0) + count
            return total

    def running_attempt(self, timeout: float = 60) -> Attempt:
        """Drive the tower until an attempt runs; returns the first one seen running (it may
        have ended since: a short payload does not wait for the test)."""
        running = select(Attempt).where(col(Attempt.ended_at).is_(None))
        seen: list[Attempt] = []

        def an_attempt_runs() -> bool:
            with Session(self.runtime.engine) as session:
                attempt = session.exec(running).first()
            if attempt is not None:
                seen.append(attempt)
            return bool(seen)

        self.drive(an_attempt_runs, timeout)
        return seen[0]

    def signal_running_pilot(self, number: int, timeout: float = 60) -> Attempt:
        """Wait for an attempt to run, send its pilot process `number`; returns the attempt."""
        attempt = self.running_attempt(timeout)
        with Session(self.runtime.engine) as session:
            pilot = session.get(Pilot, attempt.pilot_id)
        assert pilot is not None and pilot.batch_id
        os.kill(int(pilot.batch_id), number)
        return attempt

    def all_ended(self) -> bool:
        return daemon.unfinished(self.runtime) == 0

    def close(self) -> None:
        daemon.stop_pilots(self.runtime)
        self.server.shutdown()
        self.runtime.close()


def submit(runtime: Runtime, path: Path) -> None:
    """Plan and create the productions of the request at `path`, as `tower submit` does."""
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, path, runtime.config):
            productions.create(session, item)


def end_the_one_job(runtime: Runtime, site: str, outcome: Outcome, reason: str) -> None:
    """The one job of the database ran at `site` and ended as `outcome`; the retry policy
    settles it, as a pilot's report would have it."""
    with transaction(runtime.engine) as session:
        job = session.exec(select(Job)).one()
        assert job.id is not None
        for current, target in ((JobState.DEFINED, JobState.ASSIGNED),
                                (JobState.ASSIGNED, JobState.QUEUED),
                                (JobState.QUEUED, JobState.RUNNING)):
            move_jobs(session, [job.id], current, target, "test", site=site, attempt=1)
        attempt = Attempt(job_id=job.id, number=1, pilot_id=None, site=site,
                          started_at=utcnow(), heartbeat_at=utcnow())
        session.add(attempt)
        retry.end_attempt(session, attempt, outcome, reason)
        session.refresh(job)
        spec = ProductionSpec.model_validate(session.get_one(Production,
                                                             job.production_id).spec)
        retry.settle(session, runtime.config, job, spec, attempt)


@pytest.fixture
def make_runtime(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Runtime]]:
    """Runtimes on the test's database, each opened from a home `write_home` writes (`home`:
    its folder; the rest: write_home's settings); their pilots stopped, as no tower is
    there to talk to them, and closed at the end."""
    opened: list[Runtime] = []

    def make(home: str = "home", **settings: Any) -> Runtime:
        runtime = Runtime.open(load_config(write_home(tmp_path / home, database_url,
                                                      **settings)))
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        daemon.stop_pilots(runtime)
        runtime.close()


@pytest.fixture
def live_tower(tmp_path: Path, database_url: str) -> Iterator[Callable[..., LiveTower]]:
    made: list[LiveTower] = []

    def make(site: dict[str, Any] | None = None, **settings: Any) -> LiveTower:
        tower = LiveTower(write_home(tmp_path / "home", database_url, site, **settings))
        made.append(tower)
        return tower

    yield make
    for tower in made:
        tower.close()


def toy_production(directory: Path, name: str = "toy", jobs: int = 6, events: int = 200,
                   sleep: float = 0.0, examples: Path = EXAMPLES, **extra: Any) -> Path:
    """A production of the example toy simulation (in `examples`), `jobs` jobs of `events`
    events."""
    import yaml

    command = ["${python}", str(examples / "toysim.py"), "--steering", "steering.json",
               "--output-dir", "${output_dir}"]
    if sleep:
        command += ["--sleep-per-event", str(sleep)]
    request = {
        "name": name, "software": "toysim 1.0", "command": command,
        "steering": {"steering.json": '{"seed": ${seed}, "first_event": ${first_event}, '
                                      '"events": ${events}, "output": "decays_${index}.csv"}'},
        "events_total": jobs * events, "events_per_job": events, "walltime": "5m",
        "outputs": ["decays_*.csv"], **extra,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def assert_done_exactly_once(engine: Engine, jobs: int, files_per_job: int = 1) -> None:
    """Every job is done, with one successful attempt, one move to done, and its files
    cataloged once each."""
    from collections import Counter

    from catalog.models import CatalogFile
    from tower.model.models import Job, JobEvent
    from tower.model.states import JobState
    from tower.retries.outcomes import Outcome

    with Session(engine) as session:
        rows = session.exec(select(Job)).all()
        assert len(rows) == jobs
        assert {job.state for job in rows} == {JobState.DONE}
        successes = Counter(a.job_id for a in session.exec(
            select(Attempt).where(Attempt.outcome == Outcome.SUCCESS)).all())
        assert sorted(successes.values()) == [1] * jobs
        done = Counter(e.job_id for e in session.exec(
            select(JobEvent).where(JobEvent.to_state == JobState.DONE)).all())
        assert sorted(done.values()) == [1] * jobs
        files = Counter(f.job_id for f in session.exec(select(CatalogFile)).all())
        assert sorted(files.values()) == ([files_per_job] * jobs if files_per_job else [])
    assert_tally_matches(engine)


Counts = dict[tuple[int, str], tuple[int, int]]


def job_tally(session: Session) -> tuple[Counts, Counts]:
    """(kept, scanned): jobs and events per production and state as the tally keeps them,
    and as a scan of the jobs table counts them."""
    from sqlalchemy import func

    from tower.model import tally
    from tower.model.models import Job

    scanned = {(pid, str(state)): (n, int(events)) for pid, state, n, events in session.exec(
        select(Job.production_id, Job.state, func.count(), func.sum(Job.events))
        .group_by(col(Job.production_id), col(Job.state))).all()}
    kept = {(pid, state): (count.jobs, count.events)
            for pid, states in tally.counts(session).items()
            for state, count in states.items()}
    return kept, scanned


def placed_jobs(session: Session) -> dict[tuple[int, str, str, str], int]:
    """{(production id, site, queue, state): jobs} of the jobs placed at sites, as a scan of
    the jobs table counts them (what `tally.placed` keeps)."""
    from sqlalchemy import func

    from tower.model.models import Job
    from tower.model.states import JOB_PLACED

    return {(pid, site or "", queue, str(state)): n for pid, site, queue, state, n in
            session.exec(select(Job.production_id, Job.site, Job.queue, Job.state, func.count())
                         .where(col(Job.state).in_(JOB_PLACED))
                         .group_by(col(Job.production_id), col(Job.site), col(Job.queue),
                                   col(Job.state))).all()}


def assert_tally_matches(engine: Engine) -> None:
    """The kept counters say what a scan of the jobs and attempts tables says."""
    from collections import Counter

    from sqlalchemy import func

    from tower.model import tally
    from tower.model.models import JobEvent

    with Session(engine) as session:
        kept, scanned = job_tally(session)
        assert kept == scanned
        assert tally.placed(session) == placed_jobs(session)
        outcomes = Counter(
            (a.site, a.outcome, a.exit_code if a.outcome == "exit_code"
             else a.signal if a.outcome == "signal" else 0)
            for a in session.exec(select(Attempt).where(col(Attempt.ended_at).is_not(None))))
        done = session.exec(select(func.count()).select_from(JobEvent).where(
            JobEvent.to_state == "done")).one()
        kept_outcomes: Counter[tuple[str, str | None, int | None]] = Counter()
        kept_done = 0
        for (_, site, kind, code), n in tally.totals(session).items():
            if kind == tally.DONE:
                kept_done += n
            else:
                kept_outcomes[(site, kind, code)] += n
        assert kept_outcomes == outcomes
        assert kept_done == done
