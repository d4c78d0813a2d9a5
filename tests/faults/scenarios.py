"""Fault scenarios against a real tower: a `tower run` process on PostgreSQL and RabbitMQ
with local pilots, a production of seeded random payloads, faults injected from outside
while it runs, then a drain and the ledger (tests/faults/ledger.py).

Every random choice (payload lengths, exit codes, output sizes, when and what to break)
comes from one seed, printed with every result, so a failing run can be replayed with
GRIDTOWER_FAULT_SEED.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from tests.cluster import free_port
from tests.conftest import POSTGRES_ADMIN, rabbitmqctl, write_home
from tests.faults import ledger

TOWER = [sys.executable, "-m", "tower.cli"]
PAYLOAD = Path(__file__).with_name("payload.py")
POLICIES = Path(__file__).resolve().parents[2] / "tower" / "retries" / "policies.yaml"
#: In the environment of the tower and so of its pilots and payloads: teardown finds them.
RUN_VARIABLE = "GRIDTOWER_FAULT_RUN"
#: Exit code the suite's policy holds a job for (any other non-zero code is retried).
HOLD_CODE = 42
#: Payload profile (see payload.py): mostly short payloads, some failing.
PROFILE: dict[str, Any] = {"sleep": [0.0, 2.0], "long": [0, 0, 0],
                           "codes": {0: 80, 1: 12, HOLD_CODE: 4, 3: 4},
                           "files": [1, 2], "size": [1_000, 200_000]}
#: Seconds without progress after which a production is taken as stuck.
STALL = 30


def fault_policy() -> dict[str, Any]:
    """The shipped `standard` policy without waits, holding a job on exit code 42.

    Site health is left out of play (tower.yaml's health.min_attempts): with one site, a
    cool-down would stall the production for 15 minutes."""
    standard = yaml.safe_load(POLICIES.read_text())["policies"]["standard"]
    hold = {"name": "fault-hold", "match": {"exit_codes": [HOLD_CODE]}, "action": "hold"}
    return {"extends": "standard", "backoff": {"initial": 0, "max": 0},
            "rules": [hold, *standard["rules"]]}


@dataclass
class Shape:
    """What one scenario runs: jobs and payloads, and how its storage is set up."""

    jobs: int
    profile: dict[str, Any] = field(default_factory=lambda: dict(PROFILE))
    #: tmpfs sizes in MiB for the site storage and the destination (None: a plain dir).
    storage_mb: int | None = None
    destination_mb: int | None = None
    remove_source: bool = False
    #: storage.lease: how long outputs a dead tower leased wait for another.
    lease: int = 120
    drain_timeout: float = 90
    #: Attempt outcomes the ledger allows (None: any).
    outcomes: frozenset[str] | None = None


class FaultTower:
    """One scenario's tower home, its `tower run` process and the faults it can suffer."""

    def __init__(self, root: Path, database_url: str, broker_url: str, seed: int,
                 shape: Shape) -> None:
        self.root, self.database_url, self.broker_url = root, database_url, broker_url
        self.seed, self.shape = seed, shape
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:12]
        self.faults: Counter[str] = Counter()
        self.extra: list[str] = []
        self.mounts: list[Path] = []
        self.frozen: set[int] = set()
        self.home = root / "home"
        self.store, self.storage = self.home / "store", self.home / "site-storage"
        self._mount(self.storage, shape.storage_mb)
        self._mount(self.store, shape.destination_mb)
        self.config = write_home(
            self.home, database_url, broker=broker_url,
            site={"pilot": {"slots": 4, "cores": 4, "walltime": "10m", "drain_margin": 5,
                            "idle_timeout": 3},
                  "limits": {"max_queued": 3, "max_running": 3, "max_per_cycle": 3},
                  "scratch": str(self.home / "scratch"), "storage": str(self.storage)},
            api={"bind": "127.0.0.1", "port": free_port()},
            loops={"interval": 0, "republish_after": 2},
            retry={"policy": "faults", "policies": {"faults": fault_policy()}},
            health={"min_attempts": 100_000},
            storage={"destinations": {"store": {"url": f"local:{self.store}",
                                                "remove_source": shape.remove_source}},
                     "default": ["store"], "retry_delay": 1, "lease": shape.lease})
        self.env = {**os.environ, "TOWER_CONFIG": str(self.config), RUN_VARIABLE: self.run_id}
        self.engine: Engine = create_engine(database_url, poolclass=NullPool)
        self.tower: subprocess.Popen[bytes] | None = None

    # -- the production and the tower process ---------------------------------------------

    def submit(self) -> None:
        profile = json.dumps(self.shape.profile, separators=(",", ":"))
        request = {
            "name": "faults", "software": "fault payload 1",
            "command": ["${python}", str(PAYLOAD), "--seed", "${seed}", "--attempt",
                        "${attempt}", "--job", "${index}", "--output-dir", "${output_dir}",
                        "--profile", profile],
            "environment": {ledger.MARKER: self.run_id},
            "events_total": self.shape.jobs, "events_per_job": 1, "walltime": "2m",
            "outputs": ["out_*.dat"], "seed_base": self.seed % 1_000_000_000}
        path = self.root / "faults.yaml"
        path.write_text(yaml.safe_dump(request))
        subprocess.run([*TOWER, "submit", str(path)], env=self.env, check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        with open(self.home / "tower.log", "ab") as log:
            self.tower = subprocess.Popen([*TOWER, "run"], env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)

    def wait_for_copy(self, then: float) -> None:
        """Wait (10 s at most) until the stager holds an output it has not staged yet, then
        `then` seconds more: a kill lands during the copy."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.engine.connect() as connection:
                if connection.execute(text(
                        "select 1 from output where not staged and lease_until is not null "
                        "limit 1")).first():
                    time.sleep(then)
                    return
            time.sleep(0.005)

    def kill_tower(self) -> None:
        assert self.tower is not None
        self.tower.kill()
        self.tower.wait()
        self.faults["tower killed"] += 1

    def stop_tower(self) -> None:
        """End the tower as an operator would (Ctrl-C: its loops halt, the API closes)."""
        if self.tower is None or self.tower.poll() is not None:
            return
        self.tower.send_signal(signal.SIGINT)
        try:
            self.tower.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.tower.kill()
            self.tower.wait()

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return {str(state): int(n) for state, n in connection.execute(
                text("select state, count(*) from job group by state")).all()}

    def drained(self) -> bool:
        counts = self.counts()
        return bool(counts) and set(counts) <= {"done", "failed", "held", "cancelled"}

    def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, keeping the tower up; False once the production drained."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.drained():
                return False
            if self.tower is not None and self.tower.poll() is not None:
                self.extra.append(f"the tower exited by itself with {self.tower.returncode} "
                                  f"(see {self.home / 'tower.log'})")
                self.start()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return not self.drained()

    def progress(self) -> tuple[int, ...]:
        """What changes while the tower works: job events, attempts, outputs staged and tried."""
        with self.engine.connect() as connection:
            row = connection.execute(text(
                "select (select count(*) from jobevent), (select count(*) from attempt), "
                "(select count(*) from output where staged), "
                "(select coalesce(sum(tries), 0) from output)")).one()
        return tuple(int(n) for n in row)

    def drain(self) -> list[str]:
        """Wait for every job to end and the pilots to leave, stop the tower; the ledger.

        A production that made no progress for STALL seconds is stuck: the ledger says
        where, sooner than the drain's time bound would."""
        deadline = time.monotonic() + self.shape.drain_timeout
        last, since = self.progress(), time.monotonic()
        while self.pause(1.0) and time.monotonic() < deadline:
            if (now := self.progress()) != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > STALL:
                self.extra.append(f"no progress for {STALL} s: stopped waiting at {self.counts()}")
                break
        while self.pilots() and time.monotonic() < deadline + 20:
            time.sleep(0.5)
        places = ledger.Places(destinations={"store": self.store}, storages=[self.storage],
                               marker=self.run_id, pilot_logs=self.home / "scratch" / "pilot-logs",
                               outcomes=self.shape.outcomes, extra=self.extra)
        # a temporary of a copy the killed tower left is swept once older than the lease,
        # by a sweep that runs once a lease: the tower gets that long to take it
        swept = time.monotonic() + min(2 * self.shape.lease + 5, 30)
        while ledger.strays(self.engine, places) and time.monotonic() < swept:
            time.sleep(1)
        self.stop_tower()
        return ledger.check(self.engine, places)

    # -- processes ---------------------------------------------------------------------------

    def processes(self, word: str) -> list[int]:
        """Live processes of this run whose command line holds `word`."""
        return [pid for pid, cmdline in ledger.marked_processes(f"{RUN_VARIABLE}={self.run_id}")
                if word in cmdline]

    def pilots(self) -> list[int]:
        """Live pilots that are not frozen."""
        return [pid for pid in self.processes("pilots.main") if pid not in self.frozen]

    def a_pilot(self) -> int | None:
        """A pilot running payloads (whether they share its fate is the point), waiting 10 s
        at most for one; else any pilot; None once the production drained."""
        deadline = time.monotonic() + 10
        while self.pause(0.1):
            pilots = self.pilots()
            busy = sorted({_parent(child) for child in self.processes(str(PAYLOAD))}
                          & set(pilots))
            if busy or (pilots and time.monotonic() > deadline):
                return self.rng.choice(busy or pilots)
        return None

    def kill_pilot(self) -> None:
        """SIGKILL a pilot; a second later, none of its payloads may run on."""
        pid = self.a_pilot()
        if pid is None:
            return
        payloads = [child for child in self.processes(str(PAYLOAD)) if _parent(child) == pid]
        os.kill(pid, signal.SIGKILL)
        self.faults["pilot killed"] += 1
        time.sleep(1.0)
        for child in payloads:
            if _alive(child):
                self.extra.append(f"payload {child} runs on 1 s after its pilot {pid} was "
                                  f"killed: {_cmdline(child)}")

    def freeze_pilot(self, thaw_after: float | None) -> None:
        """SIGSTOP a pilot; SIGCONT it after `thaw_after` seconds, or never."""
        pid = self.a_pilot()
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        self.frozen.add(pid)
        self.faults["pilot frozen"] += 1
        if thaw_after is None:
            return
        self.pause(thaw_after)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.frozen.discard(pid)
        self.faults["pilot thawed"] += 1

    # -- connections ---------------------------------------------------------------------------

    def cut_broker(self) -> None:
        vhost = self.broker_url.rsplit("/", 1)[1]
        rabbitmqctl("close_all_connections", "--vhost", vhost, "fault suite")
        self.faults["broker connections cut"] += 1

    def cut_database(self) -> None:
        name = self.database_url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            killed = admin.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where datname = %s and pid <> pg_backend_pid()", (name,)).fetchone()
        self.faults["database connections cut"] += 1
        self.faults["database backends killed"] += int(killed[0]) if killed else 0

    # -- storage -------------------------------------------------------------------------------

    def _mount(self, path: Path, megabytes: int | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if megabytes is not None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                            str(path)], check=True, capture_output=True)
            self.mounts.append(path)

    def fill(self, path: Path, seconds: float) -> None:
        """Fill the tmpfs at `path` to the last byte for `seconds`, then free it again."""
        filler = path / ".fault-filler"
        # full already (the outputs in flight took the last byte) is full all the same
        with contextlib.suppress(OSError), open(filler, "wb") as out:
            while out.write(b"\0" * 65536):
                pass
        self.faults[f"{path.name} full"] += 1
        self.pause(seconds)
        filler.unlink(missing_ok=True)

    def read_only(self, path: Path, seconds: float) -> None:
        """Remount the tmpfs at `path` read-only for `seconds` (root ignores file modes)."""
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        self.faults[f"{path.name} read-only"] += 1
        try:
            self.pause(seconds)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True)

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what is left of this run (tower, pilots, payloads), unmount, disconnect."""
        if self.tower is not None and self.tower.poll() is None:
            self.tower.kill()
            self.tower.wait()
        for pid in self.processes(""):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in reversed(self.mounts):
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(["mount", "-o", "remount,rw", str(path)], capture_output=True)
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        self.engine.dispose()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    return "?"


# -- the scenarios: each injects its faults while the production runs ------------------------

def no_faults(tower: FaultTower, long: bool) -> None:
    """Payloads of random length (many near the 1 s claim-ahead threshold) and codes: the
    drain that follows is all."""


def tower_killed(tower: FaultTower, long: bool) -> None:
    """SIGKILL the tower at random moments, half of them while its stager copies."""
    for _ in range(4 if long else 2):
        if not tower.pause(tower.rng.uniform(1.5, 5)):
            return
        if tower.rng.random() < 0.5:
            tower.wait_for_copy(tower.rng.uniform(0, 0.05))
        tower.kill_tower()
        time.sleep(tower.rng.uniform(0.5, 2))
        tower.start()


def pilots_killed_and_frozen(tower: FaultTower, long: bool) -> None:
    for _ in range(2 if long else 1):
        if not tower.pause(tower.rng.uniform(2, 4)):
            return
        tower.kill_pilot()
        if not tower.pause(tower.rng.uniform(1, 3)):
            return
        thaw = tower.rng.choice([None, tower.rng.uniform(2, 10)])
        tower.freeze_pilot(thaw)


def connections_cut(tower: FaultTower, long: bool) -> None:
    """Close the broker's connections and terminate the tower's database backends, half of
    the latter while the stager holds an output."""
    cuts = [tower.cut_broker, tower.cut_database] * (4 if long else 2)
    tower.rng.shuffle(cuts)
    for cut in cuts:
        if not tower.pause(tower.rng.uniform(1, 3)):
            return
        if cut == tower.cut_database and tower.rng.random() < 0.5:
            tower.wait_for_copy(0)
        cut()


def storage_full(tower: FaultTower, long: bool) -> None:
    for _ in range(2 if long else 1):
        for path in tower.rng.sample([tower.storage, tower.store], 2):
            if not tower.pause(tower.rng.uniform(1, 3)):
                return
            tower.fill(path, tower.rng.uniform(3, 6))


def storage_unwritable(tower: FaultTower, long: bool) -> None:
    for _ in range(2 if long else 1):
        for path in tower.rng.sample([tower.storage, tower.store], 2):
            if not tower.pause(tower.rng.uniform(1, 3)):
                return
            tower.read_only(path, tower.rng.uniform(3, 6))


@dataclass
class Scenario:
    inject: Callable[[FaultTower, bool], None]
    shape: Callable[[bool], Shape]


def _profile(**changes: Any) -> dict[str, Any]:
    return {**PROFILE, **changes}


SCENARIOS: dict[str, Scenario] = {
    "random_payloads": Scenario(no_faults, lambda long: Shape(
        jobs=60 if long else 16, profile=_profile(sleep=[0.3, 1.7]),
        outcomes=frozenset({"success", "exit_code"}))),
    "tower_killed": Scenario(tower_killed, lambda long: Shape(
        jobs=40 if long else 12, profile=_profile(size=[2_000_000, 16_000_000]), lease=10)),
    "pilots_killed_frozen": Scenario(pilots_killed_and_frozen, lambda long: Shape(
        jobs=40 if long else 12, profile=_profile(long=[0.3, 4, 8]))),
    "connections_cut": Scenario(connections_cut, lambda long: Shape(jobs=40 if long else 16)),
    "storage_full": Scenario(storage_full, lambda long: Shape(
        jobs=40 if long else 12, profile=_profile(size=[200_000, 1_500_000]),
        storage_mb=6, destination_mb=128, remove_source=True)),
    "storage_unwritable": Scenario(storage_unwritable, lambda long: Shape(
        jobs=40 if long else 16, storage_mb=64, destination_mb=64)),
}


@dataclass
class Result:
    scenario: str
    run: int
    seed: int
    faults: Counter[str]
    counts: dict[str, int]
    violations: list[str]


def play(name: str, root: Path, database_url: str, broker_url: str, seed: int, run: int,
         long: bool) -> Result:
    """Run scenario `name` once: submit, start the tower, inject, drain, check the ledger."""
    scenario = SCENARIOS[name]
    shape = scenario.shape(long)
    if long:
        shape.drain_timeout = 150
    tower = FaultTower(root, database_url, broker_url, seed, shape)
    try:
        tower.submit()
        tower.start()
        scenario.inject(tower, long)
        violations = tower.drain()
        return Result(name, run, seed, tower.faults, tower.counts(), violations)
    finally:
        tower.close()
