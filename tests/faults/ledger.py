"""The fault suite's one ledger: what must hold after any scenario, once the tower drained.

`check` returns the violations as sentences (empty when the ledger holds), so a failing
scenario says every way it broke at once, not just the first.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Replica
from pilots.checksums import adler32_file
from tests.integration.conftest import job_tally
from tower.model import tally
from tower.model.models import Attempt, Job, Output, RetryDecision
from tower.model.states import JobState
from tower.retries.outcomes import NOT_FAILURES, Outcome

#: Where a job may end after a drain: held and failed only with a decision saying so.
ENDED = {JobState.DONE, JobState.FAILED, JobState.HELD, JobState.CANCELLED}
#: Every payload of a scenario carries this variable (its value the scenario's id), so
#: a payload left running is found whoever its parent is now.
MARKER = "GRIDTOWER_FAULT_PAYLOAD"
#: The action the last (non-passive) policy decision of a failed or held job must name.
DECIDED = {JobState.FAILED: "fail", JobState.HELD: "hold"}


@dataclass
class Places:
    """Where a scenario's files may lie: destination roots by name, site storage roots."""

    destinations: Mapping[str, Path]
    storages: Iterable[Path]
    #: The value of MARKER in this scenario's payloads.
    marker: str
    #: Where the pilots' logs are: a traceback in one is a pilot that crashed.
    pilot_logs: Path | None = None
    #: The attempt outcomes a scenario allows (None: any); with no fault injected, only the
    #: payload's own failures can happen.
    outcomes: frozenset[str] | None = None
    extra: list[str] = field(default_factory=list)


def check(engine: Engine, places: Places) -> list[str]:
    """Every violation of the ledger, in words."""
    with Session(engine) as session:
        jobs = {job.id: job for job in session.exec(select(Job)).all()}
        attempts = session.exec(select(Attempt)).all()
        decisions = session.exec(select(RetryDecision).where(
            col(RetryDecision.passive).is_(False)).order_by(col(RetryDecision.id))).all()
        outputs = session.exec(select(Output)).all()
        files = session.exec(select(CatalogFile)).all()
        replicas = session.exec(select(Replica)).all()
        found = [*_job_ends(jobs, attempts, decisions, outputs),
                 *_catalog(jobs, attempts, outputs, files, replicas, places),
                 *_strays(attempts, outputs, replicas, places),
                 *_tally(session)]
        found += _outcomes(attempts, places.outcomes)
    return [*found, *_payloads(places), *_crashes(places.pilot_logs), *places.extra]


def _job_ends(jobs: Mapping[int | None, Job], attempts: Iterable[Attempt],
              decisions: Iterable[RetryDecision], outputs: Iterable[Output]) -> Iterable[str]:
    successes: Counter[int] = Counter()
    ended_badly: set[tuple[int, int]] = set()
    for attempt in attempts:
        if attempt.ended_at is None:
            yield (f"attempt {attempt.number} of job {attempt.job_id} is still open "
                   f"(pilot {attempt.pilot_id}, started {attempt.started_at:%H:%M:%S})")
        elif attempt.outcome == Outcome.SUCCESS:
            successes[attempt.job_id] += 1
        elif attempt.outcome not in NOT_FAILURES:  # a cancelled attempt needs no decision
            ended_badly.add((attempt.job_id, attempt.number))
    last: dict[int, RetryDecision] = {}
    decided: set[tuple[int, int]] = set()
    for decision in decisions:
        last[decision.job_id] = decision
        decided.add((decision.job_id, decision.attempt))
    for job_id, job in jobs.items():
        assert job_id is not None
        state = JobState(job.state)
        if state not in ENDED:
            yield (f"job {job_id} left {state} after the drain "
                   f"({job.message or 'no message'}){_outputs_of(job, outputs)}")
        wanted = 1 if state is JobState.DONE else 0
        if state in ENDED and successes[job_id] != wanted:
            yield f"job {job_id} is {state} with {successes[job_id]} successful attempts"
        if state in DECIDED:
            final = last.get(job_id)
            if final is None or final.action != DECIDED[state]:
                said = f"{final.action} ({final.reason})" if final else "nothing"
                yield (f"job {job_id} is {state} but its last recorded decision says "
                       f"{said}")
    for job_id, number in sorted(ended_badly - decided):
        yield f"attempt {number} of job {job_id} failed with no retry decision recorded"


def _outputs_of(job: Job, outputs: Iterable[Output]) -> str:
    """For a job left staging: whether its outputs still wait (and why) or all are staged
    (then nothing will ever move it)."""
    mine = [o for o in outputs if o.job_id == job.id and o.attempt == job.attempt]
    if job.state != JobState.STAGING or not mine:
        return ""
    waiting = [o for o in mine if not o.staged]
    if not waiting:
        return f": all {len(mine)} outputs of attempt {job.attempt} are staged and cataloged"
    return "; waiting: " + ", ".join(
        f"{o.name} (tries {o.tries}, leased until {o.lease_until and f'{o.lease_until:%H:%M:%S}'}"
        f", last error {o.last_error!r})" for o in waiting)


def _catalog(jobs: Mapping[int | None, Job], attempts: Iterable[Attempt],
             outputs: Iterable[Output], files: Iterable[CatalogFile],
             replicas: Iterable[Replica], places: Places) -> Iterable[str]:
    succeeded = {(a.job_id, a.number) for a in attempts if a.outcome == Outcome.SUCCESS}
    declared: dict[int, set[str]] = defaultdict(set)
    for output in outputs:
        if (output.job_id, output.attempt) in succeeded:
            declared[output.job_id].add(output.name)
    cataloged: dict[int | None, list[CatalogFile]] = defaultdict(list)
    for catalog_file in files:
        cataloged[catalog_file.job_id].append(catalog_file)
    by_file: dict[int | None, list[Replica]] = defaultdict(list)
    for replica in replicas:
        by_file[replica.file_id].append(replica)
    for job_id, job in jobs.items():
        names = sorted(f.name for f in cataloged[job_id])
        if job.state == JobState.DONE and names != sorted(declared[job_id or 0]):
            yield (f"job {job_id} is done with catalog files {names}, but its successful "
                   f"attempt declared {sorted(declared[job_id or 0])}")
        elif job.state in ENDED - {JobState.DONE} and names:
            yield f"job {job_id} is {job.state} but the catalog holds its files {names}"
    for catalog_file in files:
        yield from _replicas(catalog_file, by_file[catalog_file.id], places)


def _replicas(catalog_file: CatalogFile, replicas: list[Replica],
              places: Places) -> Iterable[str]:
    held = {r.destination for r in replicas}
    for name in sorted(set(places.destinations) - held):
        yield f"{catalog_file.lfn} has no replica at destination {name}"
    for replica in replicas:
        path = places.destinations[replica.destination] / replica.path
        try:
            size, adler32 = path.stat().st_size, adler32_file(path)
        except OSError as exc:
            yield f"{catalog_file.lfn}: replica {path} cannot be read ({exc.strerror})"
            continue
        if (size, adler32) != (catalog_file.size, catalog_file.adler32):
            yield (f"{catalog_file.lfn}: replica {path} is {size} bytes adler32 {adler32}, "
                   f"the catalog says {catalog_file.size} bytes {catalog_file.adler32}")


def strays(engine: Engine, places: Places) -> list[str]:
    """The files nothing names, alone (what the tower's sweep is still to take)."""
    with Session(engine) as session:
        return list(_strays(session.exec(select(Attempt)).all(),
                            session.exec(select(Output)).all(),
                            session.exec(select(Replica)).all(), places))


def _strays(attempts: Iterable[Attempt], outputs: Iterable[Output],
            replicas: Iterable[Replica], places: Places) -> Iterable[str]:
    """Files at a destination or a site's storage that nothing names: no replica, no
    output row (any attempt's, staged or waiting), and no attempt still running (whose
    outputs may be on their way: `.part` files of a live copy)."""
    named = {os.path.realpath(places.destinations[r.destination] / r.path) for r in replicas}
    named |= {os.path.realpath(o.source) for o in outputs}
    live = {f"{a.job_id}.{a.number}" for a in attempts if a.ended_at is None}
    roots = [*places.destinations.values(), *places.storages]
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.realpath(os.path.join(directory, name))
                if path in named or Path(directory).name in live:
                    continue
                kind = "partial copy" if name.endswith(".part") else "file"
                yield (f"{kind} {path} ({_size(path)} bytes) is named by no replica, output "
                       f"or live attempt")


def _size(path: str) -> int | str:
    try:
        return os.stat(path).st_size
    except OSError:
        return "?"


def _tally(session: Session) -> Iterable[str]:
    """The counters tower/model/tally.py keeps, against a count of the jobs and attempts tables."""
    kept, scanned = job_tally(session)
    for key in sorted(set(scanned) | set(kept)):
        if scanned.get(key) != kept.get(key):
            yield (f"tally of production {key[0]} {key[1]}: kept (jobs, events) "
                   f"{kept.get(key)}, the jobs table says {scanned.get(key)}")
    ended: Counter[tuple[str, str]] = Counter(
        (a.site, str(a.outcome)) for a in session.exec(
            select(Attempt).where(col(Attempt.ended_at).is_not(None))))
    counted: Counter[tuple[str, str]] = Counter()
    for (_, site, kind, _), n in tally.totals(session).items():
        if kind != tally.DONE:
            counted[(site, kind)] += n
    for where in sorted(set(ended) | set(counted)):
        if ended[where] != counted[where]:
            yield (f"tally of attempts at {where[0]} ended {where[1]}: kept {counted[where]}, "
                   f"the attempts table says {ended[where]}")


def _outcomes(attempts: Iterable[Attempt], allowed: frozenset[str] | None) -> list[str]:
    if allowed is None:
        return []
    return [f"attempt {a.number} of job {a.job_id} ended {a.outcome} ({a.reason}) with no "
            f"fault injected" for a in attempts if a.ended_at and a.outcome not in allowed]


def _crashes(logs: Path | None) -> Iterable[str]:
    """Tracebacks no log line introduces: an exception nothing handled (a dead thread or
    pilot), not one a loop logged and survived."""
    for log in sorted(logs.glob("*.log")) if logs else []:
        lines = log.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines):
            before = lines[number - 1] if number else ""
            if line.startswith("Traceback") and not any(
                    f" {level} " in before for level in ("WARNING", "ERROR", "CRITICAL")):
                last = next((x for x in lines[number + 1:] if x and not x.startswith(" ")), "")
                yield f"pilot {log.stem} crashed: {last} (in {log})"


def _payloads(places: Places) -> Iterable[str]:
    for pid, cmdline in marked_processes(f"{MARKER}={places.marker}"):
        yield f"payload process {pid} is still alive after the drain: {cmdline}"


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """Live (not zombie) processes whose environment holds `marker` (NAME=VALUE)."""
    needle = marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes() + b"\0":
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state != "Z":
            found.append((int(entry.name), cmdline.strip()[:200]))
    return found
