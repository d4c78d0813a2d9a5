"""The pilot-side load generator: many simulated pilots against one real tower.

    .venv/bin/python bench/swarm.py [--levels 1000,5000,20000,50000] [--seconds 60]
                                    [--workers 2] [--apis 1] [--loops 1] [--jobs 200000]
                                    [--json OUT.json] [--svg bench/results/swarm.svg]

The tower is the deployed one: `tower serve` API processes (--apis, each on a port of its
own) and `tower run --no-api` loop processes (--loops), on PostgreSQL and RabbitMQ, over
HTTPS. A simulated pilot is no pilot program but a few coroutines that speak the pilots'
API as `pilots/pilot.py` does: it registers, heartbeats every `monitor.heartbeat_interval`
of the tower's configuration (the interval the factory hands each real pilot with
`--heartbeat`; the tower's default, 60 s) with the jobs it holds, takes up to its free
slots of messages from the site's RabbitMQ queue, claims them (with the reports of what
ended since its last call, in the same request), and reports on its own (`report`) when
there is nothing to claim. Payloads are instant (--payload-seconds holds each job that
long instead, so heartbeats carry jobs). Each worker process (--workers) drives its share
of the pilots on one asyncio loop: idle pilots cost a timer each, no thread, so a few
processes keep 50,000 pilots; HTTP/1.1 is spoken with h11 (the API's own parser) over
a pool of kept-alive TLS connections per worker, spread over the API processes.

Messages: each worker consumes the site queue with one AMQP connection (prefetch
PREFETCH) and hands messages to its hungry pilots in turn, where each real pilot holds
a connection of its own. So RabbitMQ's cost per connected pilot (a connection, a
channel, a consumer, AMQP heartbeats) is not measured here; docs/scaling.md estimates it.

Identity: the swarm acts as a **trusted proxy** (`api.trusted_proxies`, `web/identity.py`):
it shakes TLS hands with the API without a client certificate and names each simulated
pilot's certificate subject (`CN=pilot ID,OU=pilots,OU=site SITE,O=gridtower`) in the
identity header, as nginx does in front of the API in a deployment (tests/integration/
test_fleet.py). The API then authorizes every call exactly as for a pilot showing its own
certificate: a pilot may only act as itself (tower/auth/access.py), and claim fencing is
the same code. Issuing 50,000 real credentials instead would cost an EC key and a
signature each plus a rewrite of the CA's index.json (which grows with each: quadratic),
and 50,000 client TLS connections are beyond what one machine's swarm can hold; a site's
pilots reach the tower through such a proxy anyway when it terminates TLS
(contrib/nginx/gridtower.conf). What the proxy
saves the API (verifying client certificates at the handshake) it spends itself, and is
not measured here. Pilot rows are made as the factory reserves them (state `submitted`,
the site's shape, no batch job), in bulk; the site's limits are 0 so the factory submits
no real pilot, and a pilot with no batch job is one the monitor does not ask a batch
system about.

Per level of simulated pilots (8 slots each; levels ramp up, the pilots of a level
stay for the next): a ramp (registering the new pilots, at most twice --seconds), then
--seconds measured: API requests per second served, latency per call (p50, p99, mean,
n: request written to answer read on a kept-alive connection; and `with_wait`, the
same with the wait for a free connection of the worker's pool, where requests queue
when the API answers slower than the pilots ask, as they would in nginx or in the API's
own accept queue: what a pilot would see), errors, jobs done per second, the
CPU of each part of the tower read from /proc (bench/cpu.py) and per pilot per minute,
and where it saturates and why. Then, the swarm stopped, a calibration: some of its
pilots heartbeat one at a time (with the jobs they hold, then with none), for the
tower's CPU per heartbeat without contention. Database size growth per million jobs comes from
pg_database_size and pg_total_relation_size before the submission, after it, and at
the end. JSON goes to stdout or --json; the SVG plot (requests/s and p99 latency against
simulated pilots) to --svg.

Needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 with rabbitmqctl, as
`make test` starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import h11
import pika
import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import postgres, vhost  # noqa: E402
from bench.cpu import CpuMeter, Part, Parts, tower_command  # noqa: E402
from bench.gridtower import TOWER, free_port, wait_listening  # noqa: E402
from pilots.amqp import connection_parameters, queue_arguments  # noqa: E402
from tests.conftest import tls_api, write_home  # noqa: E402
from tower.auth import ca  # noqa: E402
from tower.brokers.broker import queue_name  # noqa: E402
from tower.config import load_config  # noqa: E402
from tower.model.db import bulk_insert, make_engine, transaction  # noqa: E402
from tower.model.models import Pilot  # noqa: E402
from tower.model.states import PilotState  # noqa: E402
from web import plots  # noqa: E402

SITE = "local"
SLOTS = 8
#: Messages one worker's AMQP consumer holds unacknowledged, for its hungry pilots.
PREFETCH = 4000
#: Kept-alive connections per worker to the API processes (each API serves 10 at once):
#: the most requests a worker has in flight, as a proxy's upstream keepalive pool.
CONNECTIONS = 16
#: The parts whose CPU is this tower's; RabbitMQ's node serves every session of the machine
#: (its CPU is given apart), and the swarm's workers are the load, not the tower.
TOWER_PARTS = ("api", "tower", "postgresql")
CALLS = ("register", "heartbeat", "claim", "report")
#: A request that fails (no connection, a 5xx) is tried again after this, as a pilot does.
RETRY_SECONDS = 1.0


def pilot_dn(pilot_id: str, site: str = SITE) -> str:
    """The subject of the credential the tower's CA would give the pilot (tower/auth/ca.py)."""
    return f"CN=pilot {pilot_id},OU=pilots,OU=site {site},O=gridtower"


def pilot_ids(worker: int, start: int, stop: int) -> list[str]:
    return [f"swarm{worker:02d}-{number:06d}" for number in range(start, stop)]


# ---- the tower under load -------------------------------------------------------------


@dataclass
class Tower:
    """A tower as deployed, on PostgreSQL and RabbitMQ over HTTPS, behind the swarm as its
    trusted proxy; `jobs` trivial jobs submitted before it starts."""

    directory: Path
    database: str
    broker: str
    jobs: int
    apis: int = 1
    loops: int = 1
    config: Path = field(init=False)
    urls: list[str] = field(init=False)
    heartbeat: float = field(init=False)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        home = self.directory / "home"
        authority = ca.init_ca(home / "ca", "swarm CA").directory
        ca.issue(authority, "host", "server", days=1, hosts=["127.0.0.1"])
        ports = [free_port() for _ in range(self.apis)]
        self.config = write_home(
            home, self.database, broker=self.broker,
            site={"pilot": {"slots": SLOTS, "cores": SLOTS, "walltime": "24h"},
                  # the swarm's pilots are made by the swarm: the factory submits none
                  "limits": {"max_queued": 0, "max_running": 0, "max_per_cycle": 0}},
            api=tls_api(pilot_ca=True, port=ports[0], trusted_proxies=["127.0.0.1"]),
            # the loops' default pause, and the tower's default heartbeat schedule
            loops={"interval": 5}, monitor={"heartbeat_interval": 60, "heartbeat_timeout": 600})
        self.heartbeat = load_config(self.config).monitor.heartbeat_interval
        self.sizes["empty"] = database_sizes(self.database)
        self.submit("instant", self.jobs)
        self.sizes["submitted"] = database_sizes(self.database)
        self._tower("serve", "--port", str(ports[0]), log="api-1.log")
        wait_listening(ports[0])  # the first made the tables; the others find them
        for number, port in enumerate(ports[1:], start=2):
            self._tower("serve", "--port", str(port), log=f"api-{number}.log")
        for port in ports[1:]:
            wait_listening(port)
        for number in range(self.loops):
            self._tower("run", "--no-api", log=f"loops-{number + 1}.log")
        self.urls = [f"https://127.0.0.1:{port}" for port in ports]

    def submit(self, name: str, jobs: int) -> None:
        """A production of `jobs` jobs running `/bin/true`, submitted with `tower submit`."""
        request = self.directory / f"{name}.yaml"
        request.write_text(yaml.safe_dump({
            "name": name, "software": "coreutils", "command": ["/bin/true"],
            "events_total": jobs, "events_per_job": 1, "walltime": "1m"}))
        self._tower("submit", str(request), wait=True)

    def parts(self) -> Parts:
        """This run's processes (the machine runs other towers and databases meanwhile):
        its tower processes name its tower.yaml, its PostgreSQL backends its database, its
        workers its CA file."""
        config, database = str(self.config), self.database.rsplit("/", 1)[-1]
        return {
            "api": Part(lambda line: tower_command(line, "serve") and config in line),
            "tower": Part(lambda line: tower_command(line, "run") and config in line),
            "postgresql": Part(lambda line: line.startswith("postgres") and
                               f" {database} " in line),
            "rabbitmq": Part(lambda line: "beam.smp" in line),
            "swarm": Part(lambda line: "--worker" in line and str(self.ca_file) in line)}

    @property
    def ca_file(self) -> Path:
        return self.directory / "home" / "ca" / "ca.crt"

    def _tower(self, *argv: str, log: str | None = None, wait: bool = False) -> None:
        command = [*TOWER, "--config", str(self.config), *argv]
        if wait:
            subprocess.run(command, check=True, capture_output=True)
            return
        assert log is not None
        with open(self.directory / log, "wb") as out:
            self._processes.append(subprocess.Popen(command, stdout=out,
                                                    stderr=subprocess.STDOUT))

    def add_pilots(self, ids: list[str]) -> None:
        """Pilot rows as the factory reserves them before it submits their batch jobs."""
        engine = make_engine(self.database)
        try:
            with transaction(engine) as session:
                bulk_insert(session, Pilot, [
                    {"id": pilot_id, "site": SITE, "queue": "default",
                     "state": PilotState.SUBMITTED, "slots": SLOTS, "cores": SLOTS,
                     "walltime": 24 * 3600} for pilot_id in ids])
        finally:
            engine.dispose()

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def job_counts(database: str) -> dict[str, int]:
    with psycopg.connect(database) as connection:
        rows = connection.execute("select state, count(*) from job group by state").fetchall()
    return {str(state): int(count) for state, count in rows}


def database_sizes(database: str) -> dict[str, int]:
    """Bytes of the whole database and of the tables that grow with jobs (indexes and
    TOAST included)."""
    tables = ("job", "jobevent", "attempt", "pilot")
    with psycopg.connect(database) as connection:
        row = connection.execute(
            "select pg_database_size(current_database()), "
            + ", ".join(f"coalesce(pg_total_relation_size(to_regclass('{table}')), 0)"
                        for table in tables)).fetchone()
    assert row is not None
    return dict(zip(("database", *tables), map(int, row), strict=True))


def row_updates(database: str) -> dict[str, dict[str, int]]:
    """Rows updated per table, and how many of them in place (HOT: no index written),
    from PostgreSQL's statistics."""
    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "select relname, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables "
            "where relname in ('job', 'attempt', 'pilot') order by relname").fetchall()
    return {str(name): {"updates": int(updated), "hot": int(hot)}
            for name, updated, hot in rows}


# ---- the swarm's workers, seen from the coordinator -----------------------------------


class Workers:
    """The worker processes, each driving its share of the simulated pilots; commands and
    answers are JSON lines on their stdin and stdout."""

    def __init__(self, count: int, tower: Tower, payload_seconds: float,
                 connections: int = CONNECTIONS) -> None:
        self.count = count
        self.pilots = [0] * count
        self.answers: list[queue.Queue[dict[str, Any]]] = [queue.Queue() for _ in range(count)]
        self.processes = []
        for number in range(count):
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(number),
                 "--api", ",".join(tower.urls), "--ca", str(tower.ca_file),
                 "--broker", tower.broker, "--heartbeat", str(tower.heartbeat),
                 "--payload-seconds", str(payload_seconds),
                 "--connections", str(connections)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=open(tower.directory / f"swarm-{number}.log", "wb"))  # noqa: SIM115
            self.processes.append(process)
            threading.Thread(target=self._read, args=(process.stdout, self.answers[number]),
                             daemon=True).start()

    @staticmethod
    def _read(stream: IO[bytes] | None, answers: queue.Queue[dict[str, Any]]) -> None:
        assert stream is not None
        for line in stream:
            answers.put(json.loads(line))
        answers.put({"gone": True})

    def send(self, number: int, command: dict[str, Any]) -> None:
        stdin = self.processes[number].stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        stdin.flush()

    def answer(self, number: int, timeout: float) -> dict[str, Any]:
        found = self.answers[number].get(timeout=timeout)
        if "gone" in found:
            raise RuntimeError(f"swarm worker {number} ended; see its log")
        return found

    def grow(self, tower: Tower, total: int, timeout: float) -> tuple[float, int]:
        """Bring the swarm to `total` pilots, shared evenly; wait until all registered (at
        most `timeout`). Returns the seconds it took and the pilots registered."""
        started = time.monotonic()
        for number in range(self.count):
            wanted = total // self.count + (1 if number < total % self.count else 0)
            if wanted > self.pilots[number]:
                tower.add_pilots(pilot_ids(number, self.pilots[number], wanted))
                self.send(number, {"grow": wanted})
                self.pilots[number] = wanted
        registered = 0
        for number in range(self.count):
            self.send(number, {"registered": max(0.0, started + timeout - time.monotonic())})
            registered += int(self.answer(number, timeout + 60)["registered"])
        return time.monotonic() - started, registered

    def stats(self) -> list[dict[str, Any]]:
        for number in range(self.count):
            self.send(number, {"stats": True})
        return [self.answer(number, 120)["stats"] for number in range(self.count)]

    def stop(self) -> None:
        for number in range(self.count):
            with contextlib.suppress(OSError):
                self.send(number, {"stop": True})
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---- one run: the levels --------------------------------------------------------------


def run(levels: list[int], seconds: float, directory: Path, *, workers: int = 2,
        apis: int = 1, loops: int = 1, jobs: int = 200_000,
        payload_seconds: float = 0.0, connections: int = CONNECTIONS) -> dict[str, Any]:
    """Ramp the swarm through `levels` of simulated pilots, `seconds` measured at each."""
    with postgres() as database, vhost() as broker:
        tower = Tower(directory, database, broker, jobs, apis, loops)
        try:
            tower.start()
            meter = CpuMeter(tower.parts())
            meter.start()
            swarm = Workers(workers, tower, payload_seconds, connections)
            try:
                results = [_level(tower, swarm, meter, pilots, seconds) for pilots in levels]
            finally:
                swarm.stop()
            try:
                costs = calibrate(tower, meter)
            finally:
                meter.stop()
            counts = job_counts(database)
            tower.sizes["end"] = database_sizes(database)
            updates = row_updates(database)
        finally:
            tower.stop()
    done = counts.get("done", 0)
    knees(results)
    return {"levels": results, "calibration": costs, "slots": SLOTS, "seconds": seconds,
            "workers": workers,
            "apis": apis, "loops": loops, "jobs": jobs, "payload_seconds": payload_seconds,
            "connections": connections,
            "heartbeat_s": tower.heartbeat, "jobs_done": done, "job_states": counts,
            "database": _growth(tower.sizes, jobs, done), "row_updates": updates}


def _level(tower: Tower, swarm: Workers, meter: CpuMeter, pilots: int,
           seconds: float) -> dict[str, Any]:
    ramp, registered = swarm.grow(tower, pilots, 2 * seconds)
    # the ramp's calls are not the level's; its registrations are given apart
    ramp_calls = _calls(swarm.stats(), ramp)
    before, cpu_before, machine_before = job_counts(tower.database), meter.seconds(), busy()
    started = time.monotonic()
    time.sleep(seconds)
    stats = swarm.stats()
    elapsed = time.monotonic() - started
    after, cpu_after, machine_after = job_counts(tower.database), meter.seconds(), busy()
    cpu = {part: round(cpu_after[part] - cpu_before[part], 2) for part in cpu_after}
    calls = _calls(stats, elapsed)
    waits = sorted(x for worker in stats for x in worker["waits"])
    served = sum(call["n"] for call in calls.values())
    done = after.get("done", 0) - before.get("done", 0)
    tower_cpu = sum(cpu[part] for part in TOWER_PARTS)
    result = {
        "pilots": pilots, "apis": len(tower.urls), "registered": registered,
        "ramp_s": round(ramp, 1),
        "seconds": round(elapsed, 1), "requests_per_s": round(served / elapsed, 1),
        "calls": calls, "ramp_calls": ramp_calls, "pool_wait_ms": quantiles(waits),
        "jobs_done": done, "jobs_per_s": round(done / elapsed, 1),
        "jobs_waiting": sum(after.get(state, 0) for state in ("defined", "assigned", "queued")),
        "granted": sum(worker["granted"] for worker in stats),
        "refused": sum(worker["refused"] for worker in stats),
        "machine_busy_cores": round((machine_after - machine_before) / elapsed, 2),
        "cpu_s": cpu, "cpu_share": {part: round(value / elapsed, 2) for part, value in cpu.items()},
        "tower_cpu_ms_per_pilot_minute": round(1000 * tower_cpu / pilots / (elapsed / 60), 3),
        "tower_cpu_ms_per_request": round(1000 * tower_cpu / served, 3) if served else None,
        "tower_cpu_ms_per_job": round(1000 * tower_cpu / done, 3) if done else None,
    }
    result["saturation"] = saturation(result)
    print(f"{pilots} pilots: {result['requests_per_s']} requests/s, {result['jobs_per_s']} "
          f"jobs/s; {result['saturation']}", file=sys.stderr, flush=True)
    return result


def calibrate(tower: Tower, meter: CpuMeter, count: int = 300) -> dict[str, Any]:
    """The tower's CPU per heartbeat, alone: once the swarm stopped, `count` of its pilots
    beat one after the other (no other call in flight), each with the attempts it holds,
    then each with none."""
    with psycopg.connect(tower.database) as connection:
        held = connection.execute(
            "select p.id, coalesce(json_agg(json_build_array(a.job_id, a.number)) filter "
            "(where a.job_id is not null), '[]') from pilot p left join attempt a on "
            "a.pilot_id = p.id and a.ended_at is null where p.state = 'running' "
            "group by p.id order by p.id limit %s", (count,)).fetchall()

    async def beats(with_jobs: bool) -> None:
        http = Http(tower.urls, str(tower.ca_file), 1)
        for pilot_id, jobs in held:
            await http.post(pilot_id, "heartbeat", {"jobs": jobs if with_jobs else []})

    costs: dict[str, Any] = {"pilots": len(held),
                             "jobs_per_heartbeat": round(sum(len(jobs) for _, jobs in held)
                                                         / max(len(held), 1), 2)}
    for name, with_jobs in (("heartbeat", True), ("heartbeat_empty", False)):
        before, started = meter.seconds(), time.monotonic()
        asyncio.run(beats(with_jobs))
        elapsed, after = time.monotonic() - started, meter.seconds()
        costs[name] = {"cpu_ms": {part: round(1000 * (after[part] - before[part])
                                              / max(len(held), 1), 3) for part in after},
                       "wall_ms": round(1000 * elapsed / max(len(held), 1), 2)}
        costs[name]["tower_cpu_ms"] = round(sum(costs[name]["cpu_ms"][part]
                                                for part in TOWER_PARTS), 3)
    return costs


def _calls(stats: list[dict[str, Any]], seconds: float) -> dict[str, dict[str, Any]]:
    """Per call: how many, per second, errors, latency on the connection and with the wait
    for one."""
    calls = {}
    for call in CALLS:
        latencies = sorted(x for worker in stats for x in worker["latency"].get(call, []))
        waited = sorted(x for worker in stats for x in worker["total"].get(call, []))
        calls[call] = {"n": len(latencies),
                       "per_s": round(len(latencies) / seconds, 1) if seconds else None,
                       "errors": sum(worker["errors"].get(call, 0) for worker in stats),
                       **quantiles(latencies), "with_wait": quantiles(waited)}
    return calls


def busy() -> float:
    """CPU seconds the whole machine spent busy since boot (every session's, not only
    this run's), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and mean of sorted `values` (seconds), in milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {"p50_ms": round(1000 * values[len(values) // 2], 2),
            "p99_ms": round(1000 * values[min(len(values) - 1, int(len(values) * 0.99))], 2),
            "mean_ms": round(1000 * statistics.fmean(values), 2)}


def saturation(level: dict[str, Any], cores: int | None = None) -> str:
    """What limits the level, from its CPU shares, errors and latencies."""
    cores = cores or os.cpu_count() or 1
    share = level["cpu_share"]
    busy = sum(share.values())
    top = max(share, key=lambda part: share[part])
    notes = []
    if level["registered"] < level["pilots"]:
        notes.append(f"only {level['registered']} of {level['pilots']} pilots registered "
                     "within the ramp")
    errors = sum(call["errors"] for call in level["calls"].values())
    if errors:
        notes.append(f"{errors} failed calls")
    if level["jobs_waiting"] == 0:
        notes.append("the jobs ran out")
    if level["machine_busy_cores"] >= 0.9 * cores:
        notes.append(f"the machine's {cores} cores are busy ({level['machine_busy_cores']:.2f}"
                     f" cores, {busy:.2f} of them this run's: {top} {share[top]:.2f}, "
                     + ", ".join(f"{part} {value:.2f}" for part, value in share.items()
                                 if part != top) + ")")
    if share.get("api", 0) >= 0.85 * level.get("apis", 1):
        notes.append(f"the API processes are busy ({share['api']:.2f} cores)")
    waits = level["pool_wait_ms"]["p99_ms"]
    if waits is not None and waits > 100:
        notes.append(f"requests wait for a connection (p99 {waits:.0f} ms): the API answers "
                     "slower than the pilots ask")
    return "; ".join(notes) or f"not saturated ({busy:.2f} of {cores} cores used)"


def knees(levels: list[dict[str, Any]]) -> None:
    """Add to a level's saturation note the latency knee: a call's p99 more than doubled
    from the level before while requests/s grew less than the pilots."""
    for before, level in zip(levels, levels[1:], strict=False):
        grown = level["pilots"] / before["pilots"]
        served = level["requests_per_s"] / max(before["requests_per_s"], 0.1)
        grew = []
        for call in CALLS:
            old, new = before["calls"][call]["p99_ms"], level["calls"][call]["p99_ms"]
            if old and new and new > 2 * old and served < grown:
                grew.append(f"{call} {old:.0f} -> {new:.0f} ms")
        if grew:
            level["saturation"] += (f"; latency knee: p99 {', '.join(grew)} while requests/s "
                                    f"grew {served:.2f}x for {grown:.1f}x pilots")


def _growth(sizes: dict[str, dict[str, int]], jobs: int, done: int) -> dict[str, Any]:
    """Bytes per job submitted and per job done, and so per million jobs."""
    submitted = {key: sizes["submitted"][key] - sizes["empty"][key] for key in sizes["empty"]}
    ran = {key: sizes["end"][key] - sizes["submitted"][key] for key in sizes["empty"]}
    return {"sizes": sizes,
            "submit_bytes_per_job": {k: round(v / jobs) for k, v in submitted.items()},
            "run_bytes_per_job": {k: round(v / done) for k, v in ran.items()} if done else None,
            "gb_per_million_jobs": round((submitted["database"] / jobs
                                          + (ran["database"] / done if done else 0))
                                         * 1e6 / 1e9, 2)}


# ---- the plot -------------------------------------------------------------------------


def plot(result: dict[str, Any]) -> str:
    """Requests/s, then p99 latency per call, against simulated pilots: one SVG document."""
    levels = result["levels"]
    xs = [float(level["pilots"]) for level in levels]
    rate = plots.lines("API requests served per second", xs, [
        plots.Series("requests/s", tuple(float(level["requests_per_s"]) for level in levels),
                     "#1e88e5"),
        plots.Series("jobs done/s", tuple(float(level["jobs_per_s"]) for level in levels),
                     "#43a047")], x_unit="simulated pilots", unit="per second")
    colors = {"register": "#8e24aa", "heartbeat": "#fb8c00", "claim": "#1e88e5",
              "report": "#e53935"}
    latency = plots.lines("p99 latency per call, on the connection", xs, [
        plots.Series(call, tuple(float(measured(level, call)["p99_ms"] or 0)
                                 for level in levels), colors[call])
        for call in CALLS if any(measured(level, call)["n"] for level in levels)],
        x_unit="simulated pilots", unit="ms")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<svg xmlns="http://www.w3.org/2000/svg" width="720" height="460">\n'
            f'<svg y="0">{rate}</svg>\n<svg y="230">{latency}</svg>\n</svg>\n')


def measured(level: dict[str, Any], call: str) -> dict[str, Any]:
    """A level's figures of `call`: registrations are measured during its ramp."""
    return level["ramp_calls" if call == "register" else "calls"][call]  # type: ignore[no-any-return]


# ---- a worker: simulated pilots on one asyncio loop -----------------------------------


#: An open connection: its reader, its writer, and h11's state of it.
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]


class Http:
    """HTTP/1.1 POSTs over a pool of kept-alive TLS connections, spread over the API
    processes; the identity header names the calling pilot, as a trusted proxy does."""

    def __init__(self, urls: list[str], ca_file: str, size: int) -> None:
        self.urls = [urlsplit(url) for url in urls]
        self.context = ssl.create_default_context(cafile=ca_file)
        #: Free places for a connection (None: not opened yet, opened on first use), and the
        #: calls waiting for one, first come first served: a connection given back goes to
        #: the oldest waiter, never to a pilot that asks again at once (asyncio.Queue would
        #: let a busy pilot's next claim overtake every waiting heartbeat and register).
        #: Free connections are used in turn, so none idles long enough for the API to
        #: close it (api.limits.idle_timeout).
        self.free: collections.deque[Connection | None] = collections.deque([None] * size)
        self.waiting: collections.deque[asyncio.Future[Connection | None]] = \
            collections.deque()
        self.opened = 0

    async def post(self, pilot_id: str, action: str, body: dict[str, Any],
                   measure: Stats | None = None, dn: str | None = None) -> tuple[int, Any]:
        """(status, JSON answer) of pilot `pilot_id`'s call, made as the pilot whose
        certificate subject is `dn` (default: its own); retried while the API cannot be
        reached or fails."""
        while True:
            asked = time.perf_counter()
            connection = await self._acquire()
            sent = time.perf_counter()
            try:
                if connection is None:
                    connection = await self._open()
                status, answer = await self._exchange(connection, pilot_id, action, body,
                                                      dn or pilot_dn(pilot_id))
            except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, ValueError):
                status, answer = 599, None
                with contextlib.suppress(Exception):
                    if connection is not None:
                        connection[1].close()
                connection = None
            if connection is not None and connection[2].our_state is not h11.IDLE:
                connection[1].close()  # the API ends this connection: a new one next time
                connection = None
            self._release(connection)
            if measure is not None:
                measure.record(action, status, time.perf_counter() - sent, sent - asked)
            if status < 500:
                return status, answer
            await asyncio.sleep(RETRY_SECONDS)

    async def _acquire(self) -> Connection | None:
        if self.free and not self.waiting:
            return self.free.popleft()
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def _release(self, connection: Connection | None) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.free.append(connection)

    async def _open(self) -> Connection:
        url = self.urls[self.opened % len(self.urls)]
        self.opened += 1
        reader, writer = await asyncio.open_connection(url.hostname, url.port,
                                                       ssl=self.context)
        return reader, writer, h11.Connection(h11.CLIENT)

    async def _exchange(self, connection: Connection, pilot_id: str,
                        action: str, body: dict[str, Any], dn: str) -> tuple[int, Any]:
        reader, writer, state = connection
        data = json.dumps(body).encode()
        url = self.urls[0]
        writer.write(state.send(h11.Request(
            method="POST", target=f"/api/v1/pilots/{pilot_id}/{action}",
            headers=[("Host", f"{url.hostname}:{url.port}"),
                     ("Content-Type", "application/json"),
                     ("Content-Length", str(len(data))),
                     ("X-Client-DN", dn)]))
                     + state.send(h11.Data(data=data)) + state.send(h11.EndOfMessage()))
        await writer.drain()
        status, chunks = 0, []
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                received = await reader.read(65536)
                state.receive_data(received)
                if not received and state.their_state is not h11.DONE:
                    raise ConnectionResetError("the API closed the connection")
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
        answer = json.loads(b"".join(chunks)) if chunks else None
        return status, answer


class Stats:
    """A worker's calls since its last `take`: latency per call, pool waits, errors."""

    def __init__(self) -> None:
        self.take()

    def take(self) -> dict[str, Any]:
        taken = getattr(self, "_data", None)
        self._data: dict[str, Any] = {"latency": collections.defaultdict(list),
                                      "total": collections.defaultdict(list), "waits": [],
                                      "errors": collections.Counter(), "granted": 0,
                                      "refused": 0}
        return taken or self._data

    def record(self, action: str, status: int, seconds: float, waited: float) -> None:
        self._data["latency"][action].append(round(seconds, 6))
        self._data["total"][action].append(round(seconds + waited, 6))
        self._data["waits"].append(round(waited, 6))
        if status >= 400:
            self._data["errors"][action] += 1

    def claimed(self, granted: int, refused: int) -> None:
        self._data["granted"] += granted
        self._data["refused"] += refused


class Messages:
    """One AMQP consumer of the site queue in a thread of its own (pika is blocking);
    deliveries go to the asyncio loop, acknowledgements come back from it."""

    def __init__(self, url: str, site_queue: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url, self.queue, self.loop = url, site_queue, loop
        self.ready: collections.deque[tuple[int, int, int]] = collections.deque()
        self.arrived = asyncio.Event()
        self.acks: collections.deque[int] = collections.deque()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._consume, daemon=True, name="amqp")
        self.thread.start()

    def take(self, count: int) -> list[tuple[int, int, int]]:
        taken: list[tuple[int, int, int]] = []
        while self.ready and len(taken) < count:
            taken.append(self.ready.popleft())
        if not self.ready:
            self.arrived.clear()
        return taken

    def ack(self, tags: list[int]) -> None:
        self.acks.extend(tags)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        channel = connection.channel()
        channel.queue_declare(self.queue, durable=True, arguments=queue_arguments("classic"))
        channel.basic_qos(prefetch_count=PREFETCH)

        def delivered(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            message = json.loads(body)
            self.ready.append((int(message["job"]), int(message["attempt"]),
                               int(method.delivery_tag)))
            self.loop.call_soon_threadsafe(self.arrived.set)

        channel.basic_consume(self.queue, delivered)
        while not self.done.is_set():
            connection.process_data_events(time_limit=0.02)
            while self.acks:
                channel.basic_ack(self.acks.popleft())
        connection.close()


class Swarm:
    """A worker's simulated pilots."""

    def __init__(self, worker: int, http: Http, messages: Messages, heartbeat: float,
                 payload_seconds: float) -> None:
        self.worker, self.http, self.messages = worker, http, messages
        self.heartbeat, self.payload_seconds = heartbeat, payload_seconds
        self.stats = Stats()
        self.count = 0
        self.registered = 0
        #: Pilots with free slots, waiting for messages, in turn; each waits on its future.
        self.hungry: collections.deque[asyncio.Future[None]] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()

    def grow(self, total: int) -> None:
        for pilot_id in pilot_ids(self.worker, self.count, total):
            task = asyncio.get_running_loop().create_task(self.pilot(pilot_id))
            self.tasks.add(task)
        self.count = max(self.count, total)

    async def dispatch(self) -> None:
        """Wake a hungry pilot whenever messages wait."""
        while True:
            await self.messages.arrived.wait()
            if not self.messages.ready:
                self.messages.arrived.clear()
                continue
            while self.messages.ready and self.hungry:
                waiter = self.hungry.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    await asyncio.sleep(0)  # let it take its messages
            if self.messages.ready:
                await asyncio.sleep(0.01)  # every pilot is busy: wait for one to free

    async def pilot(self, pilot_id: str) -> None:
        status, answer = await self.http.post(pilot_id, "register",
                                              {"host": f"swarm-{self.worker}"}, self.stats)
        if status != 200:
            print(f"{pilot_id}: register refused: {answer}", file=sys.stderr)
            return
        self.registered += 1
        held: dict[tuple[int, int], float] = {}  # (job, attempt): when its payload ends
        beating = asyncio.get_running_loop().create_task(self.beat(pilot_id, held))
        self.tasks.add(beating)
        ended: list[dict[str, Any]] = []
        while True:
            now = time.monotonic()
            for key in [key for key, end in held.items() if end <= now]:
                del held[key]
                ended.append(finished(*key))
            taken = self.messages.take(SLOTS - len(held)) if len(held) < SLOTS else []
            if taken:
                status, answer = await self.http.post(pilot_id, "claim", {
                    "jobs": [[job, attempt] for job, attempt, _ in taken],
                    "reports": ended}, self.stats)
                self.messages.ack([tag for _, _, tag in taken])
                ended = []
                granted = [item for item in (answer or {}).get("jobs", []) if item["granted"]]
                self.stats.claimed(len(granted), len(taken) - len(granted))
                for item in granted:
                    held[(item["job"], item["attempt"])] = now + self.payload_seconds
                continue
            if ended:
                await self.http.post(pilot_id, "report", {"reports": ended}, self.stats)
                ended = []
            waiter = asyncio.get_running_loop().create_future()
            self.hungry.append(waiter)
            wake = min(held.values(), default=now + 3600) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout=max(wake, 0.001))

    async def beat(self, pilot_id: str, held: dict[tuple[int, int], float]) -> None:
        # pilots start at different times: the first beat falls anywhere in the interval
        await asyncio.sleep(random.uniform(0, self.heartbeat))
        while True:
            await self.http.post(pilot_id, "heartbeat",
                                 {"jobs": [list(key) for key in held]}, self.stats)
            await asyncio.sleep(self.heartbeat)


def finished(job: int, attempt: int) -> dict[str, Any]:
    """What a pilot reports of a payload that ran `/bin/true` (pilots/payload.py)."""
    return {"job": job, "attempt": attempt, "ending": "finished", "exit_code": 0,
            "signal": None, "reason": None, "log_tail": "", "outputs": [],
            "max_rss_mb": 2, "cpu_seconds": 0.001, "wall_seconds": 0.002,
            "provenance": {"host": "swarm", "command": ["/bin/true"],
                           "argv": ["/bin/true"]}}


async def worker_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    http = Http(args.api.split(","), args.ca, args.connections)
    messages = Messages(args.broker, queue_name(SITE, "default"), loop)
    swarm = Swarm(args.worker, http, messages, args.heartbeat, args.payload_seconds)
    dispatcher = loop.create_task(swarm.dispatch())
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {"stop": True})

    threading.Thread(target=read, daemon=True).start()
    while True:
        command = await commands.get()
        if "grow" in command:
            swarm.grow(int(command["grow"]))
        elif "registered" in command:
            deadline = time.monotonic() + float(command["registered"])
            while swarm.registered < swarm.count and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            answer({"registered": swarm.registered})
        elif "stats" in command:
            answer({"stats": swarm.stats.take()})
        elif "stop" in command:
            break
    dispatcher.cancel()
    messages.done.set()
    messages.thread.join(timeout=10)


def answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


# ---- the command ----------------------------------------------------------------------


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def levels_option(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels: expected numbers separated by commas, "
                                         f"got {text!r}") from None
    if not levels or any(level <= 0 for level in levels):
        raise argparse.ArgumentTypeError("--levels: each level must be a positive number")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=levels_option, default=[1000, 5000, 20000, 50000],
                        help="simulated pilots at each level, rising")
    parser.add_argument("--seconds", type=float, default=60, help="measured per level")
    parser.add_argument("--workers", type=int, default=2, help="swarm processes")
    parser.add_argument("--apis", type=int, default=1, help="`tower serve` processes")
    parser.add_argument("--loops", type=int, default=1, help="`tower run --no-api` processes")
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs submitted")
    parser.add_argument("--payload-seconds", type=float, default=0.0,
                        help="how long each simulated payload holds its slot (0: instant)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help="kept-alive connections of each worker to the API")
    parser.add_argument("--json", type=Path, help="write the result here (default: stdout)")
    parser.add_argument("--svg", type=Path, default=ROOT / "bench" / "results" / "swarm.svg")
    # a worker process, started by the coordinator
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--heartbeat", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        asyncio.run(worker_main(args))
        return
    with scratch() as directory:
        result = run(args.levels, args.seconds, directory, workers=args.workers,
                     apis=args.apis, loops=args.loops, jobs=args.jobs,
                     payload_seconds=args.payload_seconds, connections=args.connections)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(plot(result))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
