"""Peer baselines for gridtower's benchmarks: what people would pick instead, on the same machine.

Run with the peers venv (made by bench/peers-venv.sh):
    bench/.peers-venv/bin/python bench/peers.py KIND [--jobs N] [--timeout S]

Kinds (each "job" is one run of /bin/true, as in gridtower's no-op benchmark):
  celery           Celery 5, RabbitMQ broker (fresh vhost), PostgreSQL result backend (fresh
                   database), a `celery worker` with the default prefork pool and concurrency.
                   N tasks each run /bin/true; measured from the first send until all N
                   results are stored (counted in PostgreSQL every 0.2 s; --celery-wait get
                   waits with AsyncResult.get() per task instead, which is far slower here).
  celery-noresult  The same without a result backend (task_ignore_result); measured from the
                   first send until the worker's own counters say all N ran and none is active.
  parsl            Parsl HighThroughputExecutor, LocalProvider, 2 workers; N bash_apps returning
                   "/bin/true"; measured from the first submit to the last future's result.
  spawn            The machine's process-spawn ceiling: subprocess.run(["/bin/true"]) N times
                   in one thread, then in 2 threads; `rate` is the better of the two.
  pika             Raw RabbitMQ ceilings with pika on a fresh vhost: (a) persistent publishes
                   with pipelined publisher confirms (SelectConnection, bounded window), (b)
                   persistent publishes waiting for each confirm, (c) consuming (a)'s queue with
                   prefetch 50 and an ack per message. `rate` is (a).

Output: one JSON object on stdout (logs go to stderr) with kind, jobs, seconds, rate,
cpu_seconds (component -> user+sys CPU seconds of the measured part), cpu_per_job_ms, versions,
settings, and per kind extras (stored, rates, phases, server_cpu_seconds). server_cpu_seconds is
the CPU of the whole RabbitMQ / PostgreSQL server process trees over the measured part: those
servers are shared, so it includes whatever else ran on them meanwhile.
CPU of other processes is read from /proc/<pid>/stat (utime+stime of each process in the tree,
plus cutime+cstime for children it has reaped, so /bin/true runs are counted too).
Exit status: 0 ok, 3 timeout, 1 any other failure.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import functools
import importlib.metadata
import json
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("peers")

HERE = Path(__file__).resolve().parent
DEFAULT_JOBS = {"celery": 20000, "celery-noresult": 20000, "parsl": 20000, "spawn": 5000,
                "pika": 20000}
TASK_NAME = "peers.run_true"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


class BenchTimeout(Exception):
    """The run went past --timeout."""


class Deadline:
    """One time budget for the whole run, so every wait and loop is bounded."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self, what: str) -> float:
        """Seconds left; raises BenchTimeout naming `what` if none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchTimeout(f"timed out after {self.seconds:.0f} s while {what}")
        return left


# --- CPU accounting -------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    """One /proc/<pid>/stat entry: parent, command name, CPU seconds incl. reaped children."""

    ppid: int
    comm: str
    own: float
    reaped: float


def proc_table() -> dict[int, Proc]:
    """Snapshot of every process on the machine."""
    table: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited while we scanned
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        table[int(entry)] = Proc(int(fields[1]), comm, (utime + stime) / CLK_TCK,
                                 (cutime + cstime) / CLK_TCK)
    return table


def tree_cpu(table: dict[int, Proc], root: int, *, include_root_own: bool = True) -> float:
    """CPU seconds of `root` and all its live descendants, including children they reaped."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        proc = table.get(pid)
        if proc is None:
            continue
        total += proc.reaped + (proc.own if pid != root or include_root_own else 0.0)
        todo.extend(children.get(pid, []))
    return total


def server_cpu(table: dict[int, Proc]) -> dict[str, float]:
    """CPU seconds of the RabbitMQ (beam.smp) and PostgreSQL (postmaster) process trees."""
    out: dict[str, float] = {}
    for name, comm in (("rabbitmq", "beam.smp"), ("postgres", "postgres")):
        roots = [pid for pid, p in table.items()
                 if p.comm == comm and table.get(p.ppid, Proc(0, "", 0, 0)).comm != comm]
        out[name] = sum(tree_cpu(table, pid) for pid in roots)
    return out


def self_cpu() -> float:
    """User+sys CPU seconds of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu() -> float:
    """User+sys CPU seconds of this process's reaped children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per-component difference, rounded for the JSON."""
    return {k: round(after[k] - before[k], 3) for k in after}


# --- services ---------------------------------------------------------------------------------

def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl; it only talks to the local node."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=120)
    return done.stdout.strip()


@contextlib.contextmanager
def fresh_vhost() -> Iterator[str]:
    """A new RabbitMQ vhost with full permissions for guest, deleted afterwards."""
    name = f"gt-peers-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        log.info("vhost %s", name)
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)
        log.info("deleted vhost %s", name)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A new PostgreSQL database, dropped afterwards; yields (name, server version)."""
    import psycopg2
    from psycopg2 import sql

    name = f"gt_peers_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        log.info("database %s", name)
        try:
            yield name, version
        finally:
            with admin.cursor() as cur:
                # FORCE: the client's pooled backend connections may still be open.
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            log.info("dropped database %s", name)
    finally:
        admin.close()


def amqp_url(base: str, vhost: str) -> str:
    """Broker URL for one vhost."""
    return f"{base.rstrip('/')}/{vhost}"


def with_db(url: str, db: str) -> str:
    """The admin URL pointed at another database."""
    return f"{url.rsplit('/', 1)[0]}/{db}"


def hide_password(url: str) -> str:
    """URL for the JSON, without its password."""
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages`, plus python."""
    out = {p: importlib.metadata.version(p) for p in packages}
    out["python"] = platform.python_version()
    return out


# --- celery -----------------------------------------------------------------------------------

def run_true() -> int:
    """The Celery task: run /bin/true, return its exit code."""
    return subprocess.run(["/bin/true"], check=True).returncode


def celery_settings() -> dict[str, Any]:
    """Every Celery setting this script changes from the defaults, taken from the environment
    so that the client and the worker (`celery -A peers:celery_app`) agree."""
    settings: dict[str, Any] = {"broker_url": os.environ["PEERS_BROKER_URL"]}
    backend = os.environ.get("PEERS_RESULT_BACKEND")
    if backend:
        settings["result_backend"] = backend
    else:
        settings["task_ignore_result"] = True
    return settings


@functools.cache
def make_celery_app() -> Any:
    """The Celery app with the one task registered."""
    from celery import Celery

    app = Celery("peers")
    app.conf.update(celery_settings())
    app.task(name=TASK_NAME)(run_true)
    return app


def __getattr__(name: str) -> Any:
    """`peers.celery_app` for the worker, built on first access so other kinds need no Celery."""
    if name == "celery_app":
        return make_celery_app()
    raise AttributeError(name)


def stop_process_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the leader (warm shutdown), then SIGKILL whatever is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in %.0f s; killing its group", proc.pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_celery_executed(app: Any, total: int, deadline: Deadline) -> None:
    """Block until the worker has accepted `total` tasks and has none active (no results)."""
    while True:
        deadline.remaining("waiting for the worker to run all tasks")
        inspect = app.control.inspect(timeout=1.0, limit=1)
        stats = inspect.stats() or {}
        accepted = sum(s.get("total", {}).get(TASK_NAME, 0) for s in stats.values())
        if accepted >= total:
            active = inspect.active() or {}
            if not any(active.values()):
                return
        time.sleep(0.05)


CELERY_WAITS = {
    "db": "SELECT count(*) FROM celery_taskmeta polled every 0.2 s on one connection",
    "get": "AsyncResult.get() per task (the client's DatabaseBackend opens a new, unpooled "
           "connection per lookup)",
    "noresult": "inspect().stats() total and inspect().active() empty, polled every 0.05 s",
}


def wait_celery_results(sent: list[Any], deadline: Deadline) -> None:
    """Block on AsyncResult.get() for each task, as a Celery user would."""
    import celery.exceptions

    try:
        bad = [r.id for r in sent if r.get(timeout=deadline.remaining("waiting")) != 0]
    except celery.exceptions.TimeoutError as exc:
        raise BenchTimeout(f"timed out after {deadline.seconds:.0f} s waiting for results") from exc
    if bad:
        raise RuntimeError(f"{len(bad)} tasks returned non-zero, e.g. {bad[0]}")


def wait_celery_stored(db_url: str, total: int, deadline: Deadline) -> None:
    """Block until `total` results are in the database (the row is written when a task ends)."""
    import psycopg2

    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM celery_taskmeta")
                if cur.fetchone()[0] >= total:
                    return
                deadline.remaining("waiting for results in PostgreSQL")
                time.sleep(0.2)
    finally:
        conn.close()


def bench_celery(args: argparse.Namespace, deadline: Deadline, *, results: bool) -> dict[str, Any]:
    """Celery + RabbitMQ (+ PostgreSQL results); see the module docstring."""
    with contextlib.ExitStack() as stack:
        vhost = stack.enter_context(fresh_vhost())
        os.environ["PEERS_BROKER_URL"] = amqp_url(args.amqp, vhost)
        db_version = None
        if results:
            db, db_version = stack.enter_context(fresh_database(args.pg_admin))
            os.environ["PEERS_RESULT_BACKEND"] = "db+" + with_db(
                args.pg_admin.replace("postgresql://", "postgresql+psycopg2://", 1), db)
        else:
            os.environ.pop("PEERS_RESULT_BACKEND", None)
        app = make_celery_app()
        stack.callback(app.close)
        task = app.tasks[TASK_NAME]
        worker_cmd = [str(Path(sys.executable).with_name("celery")), "-A", "peers:celery_app",
                      "worker", "--loglevel=warning"]
        # Own session, so cleanup can kill the pool children too; logs to our stderr.
        worker = subprocess.Popen(worker_cmd, cwd=HERE, stdout=sys.stderr, start_new_session=True)
        stack.callback(stop_process_group, worker, 60.0)
        while not app.control.ping(timeout=1.0):
            deadline.remaining("waiting for the celery worker to start")
            if worker.poll() is not None:
                raise RuntimeError(f"celery worker exited with {worker.returncode}")
        log.info("worker up (pid %d); warm-up with %d tasks", worker.pid, args.warmup)
        warm = [task.delay() for _ in range(args.warmup)]
        if results:
            for r in warm:
                r.get(timeout=deadline.remaining("warming up"))
        else:
            wait_celery_executed(app, args.warmup, deadline)

        def snapshot() -> tuple[dict[str, float], dict[str, float]]:
            table = proc_table()
            return {"client": self_cpu(), "worker": tree_cpu(table, worker.pid)}, server_cpu(table)

        cpu0, srv0 = snapshot()
        t0 = time.perf_counter()
        sent = []
        for _ in range(args.jobs):
            sent.append(task.delay())
            deadline.remaining("sending tasks")
        log.info("sent %d tasks in %.1f s", args.jobs, time.perf_counter() - t0)
        if results and args.celery_wait == "get":
            wait_celery_results(sent, deadline)
        elif results:
            wait_celery_stored(with_db(args.pg_admin, db), args.warmup + args.jobs, deadline)
        else:
            wait_celery_executed(app, args.warmup + args.jobs, deadline)
        seconds = time.perf_counter() - t0
        cpu1, srv1 = snapshot()
        out: dict[str, Any] = {"seconds": seconds, "cpu_seconds": delta(cpu1, cpu0),
                               "server_cpu_seconds": delta(srv1, srv0)}
        if results:
            out["stored"] = count_stored(with_db(args.pg_admin, db), [r.id for r in sent])
            if out["stored"] != args.jobs:
                raise RuntimeError(f"only {out['stored']} of {args.jobs} results are SUCCESS")
        settings = {k: hide_password(v) if k.endswith("url") or k == "result_backend" else v
                    for k, v in celery_settings().items()}
        settings |= {"worker": " ".join(["celery", *worker_cmd[1:]]),
                     "worker_concurrency": f"default (os.cpu_count() = {os.cpu_count()})",
                     "warmup_tasks": args.warmup,
                     "wait": CELERY_WAITS[args.celery_wait if results else "noresult"]}
        out["settings"] = settings
        out["versions"] = versions("celery", "kombu", "amqp", "billiard")
        out["versions"]["rabbitmq"] = rabbitmqctl("version")
        if results:
            out["versions"] |= {"SQLAlchemy": importlib.metadata.version("SQLAlchemy"),
                                "psycopg2-binary": importlib.metadata.version("psycopg2-binary"),
                                "postgresql": db_version}
        return out


def count_stored(db_url: str, ids: list[str]) -> int:
    """How many of `ids` have a SUCCESS row in Celery's result table."""
    import psycopg2

    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS' "
                        "AND task_id = ANY(%s)", (ids,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


# --- parsl ------------------------------------------------------------------------------------

def become_subreaper() -> None:
    """Adopt orphaned descendants: LocalProvider starts the worker pool in the background of a
    shell that exits, and only as our descendant can /proc count its CPU (and cleanup kill it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def kill_descendants() -> None:
    """SIGKILL and reap whatever this process started that is still around."""
    table = proc_table()
    me = os.getpid()
    leftovers: list[int] = []
    for pid in table:
        up, seen = pid, 0
        while up > 1 and up != me and seen < 64:
            up, seen = table[up].ppid if up in table else 0, seen + 1
        if up == me and pid != me:
            leftovers.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if leftovers:
        log.info("killed %d leftover descendants: %s", len(leftovers),
                 " ".join(f"{pid}:{table[pid].comm}" for pid in leftovers))
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def bench_parsl(args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    """Parsl HighThroughputExecutor with 2 local workers; see the module docstring."""
    import parsl
    from parsl.app.app import bash_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    # Parsl starts interchange.py and process_worker_pool.py by name, from the venv's bin,
    # which is not on PATH when the venv's python is run without activating it.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    become_subreaper()
    run_dir = tempfile.mkdtemp(prefix="peers-parsl-")
    try:
        executor = HighThroughputExecutor(label="htex", address="127.0.0.1",
                                          max_workers_per_node=2, provider=LocalProvider())
        dfk = parsl.load(Config(executors=[executor], run_dir=run_dir))
        try:
            @bash_app
            def true_app() -> str:
                return "/bin/true"

            log.info("parsl loaded; warm-up with %d apps", args.warmup)
            for f in [true_app() for _ in range(args.warmup)]:
                f.result(timeout=deadline.remaining("warming up"))
            if executor.interchange_proc is None:
                raise RuntimeError("no local interchange process")
            ix = executor.interchange_proc.pid

            def snapshot() -> dict[str, float]:
                table = proc_table()
                kids = tree_cpu(table, os.getpid(), include_root_own=False)
                interchange = tree_cpu(table, ix)
                return {"client": self_cpu(), "interchange": interchange,
                        "workers": kids - interchange}

            cpu0 = snapshot()
            t0 = time.perf_counter()
            futures = []
            for _ in range(args.jobs):
                futures.append(true_app())
                deadline.remaining("submitting apps")
            log.info("submitted %d apps in %.1f s", args.jobs, time.perf_counter() - t0)
            try:
                bad = sum(f.result(timeout=deadline.remaining("waiting")) != 0 for f in futures)
            except concurrent.futures.TimeoutError as exc:
                raise BenchTimeout(f"timed out after {deadline.seconds:.0f} s waiting for "
                                   "futures") from exc
            if bad:
                raise RuntimeError(f"{bad} apps returned non-zero")
            seconds = time.perf_counter() - t0
            cpu1 = snapshot()
        finally:
            dfk.cleanup()
            parsl.clear()
    finally:
        kill_descendants()  # dfk.cleanup() leaves the LocalProvider worker pool running
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"seconds": seconds, "cpu_seconds": delta(cpu1, cpu0),
            "settings": {"executor": "HighThroughputExecutor", "max_workers_per_node": 2,
                         "address": "127.0.0.1", "provider": "LocalProvider() defaults",
                         "run_dir": "temporary", "warmup_apps": args.warmup},
            "versions": versions("parsl", "pyzmq")}


# --- spawn ------------------------------------------------------------------------------------

def bench_spawn(args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    """subprocess.run(["/bin/true"]) in 1 thread and in 2 threads."""

    def spawn(count: int) -> None:
        for _ in range(count):
            subprocess.run(["/bin/true"], check=True)
            deadline.remaining("spawning")

    modes: dict[str, dict[str, Any]] = {}
    for name, threads in (("serial", 1), ("threads2", 2)):
        cpu0 = {"client": self_cpu(), "children": children_cpu()}
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            shares = [args.jobs // threads + (i < args.jobs % threads) for i in range(threads)]
            for f in [pool.submit(spawn, s) for s in shares]:
                f.result()
        seconds = time.perf_counter() - t0
        cpu = delta({"client": self_cpu(), "children": children_cpu()}, cpu0)
        modes[name] = {"seconds": round(seconds, 3), "rate": round(args.jobs / seconds, 1),
                       "cpu_seconds": cpu}
        log.info("%s: %.0f/s", name, args.jobs / seconds)
    best = max(modes.values(), key=lambda m: m["rate"])
    return {"seconds": best["seconds"], "cpu_seconds": best["cpu_seconds"],
            "rates": {k: m["rate"] for k, m in modes.items()}, "modes": modes,
            "settings": {"call": 'subprocess.run(["/bin/true"], check=True)'},
            "versions": versions()}


# --- pika -------------------------------------------------------------------------------------

def message(i: int) -> bytes:
    """A ~100-byte JSON body, like a small job description."""
    return json.dumps({"job": i, "production": "peers-bench", "seed": 1_000_003 * i % 2**31,
                       "events": 1000, "site": "local-2core"}).encode()


class AsyncConfirmPublisher:
    """Publish `n` persistent messages on a SelectConnection, keeping at most `window`
    unconfirmed, until the broker has confirmed (or nacked) all of them."""

    def __init__(self, params: Any, queue: str, n: int, window: int, deadline: Deadline) -> None:
        self.params, self.queue, self.n, self.window = params, queue, n, window
        self.deadline = deadline
        self.published = self.acked = self.nacked = 0
        self.unconfirmed: set[int] = set()
        self.low = 1  # no tag below this is unconfirmed
        self.t0 = self.t1 = 0.0
        self.error: BaseException | None = None
        self.conn: Any = None
        self.channel: Any = None

    def run(self) -> float:
        """Publish everything; returns seconds from the first publish to the last confirm."""
        import pika

        self.pika = pika
        self.conn = pika.SelectConnection(self.params, on_open_callback=self._on_open,
                                          on_open_error_callback=self._on_fail,
                                          on_close_callback=self._on_closed)
        self.conn.ioloop.call_later(self.deadline.remaining("publishing"), self._on_timeout)
        self.conn.ioloop.start()
        if self.error:
            raise self.error
        if self.nacked:
            raise RuntimeError(f"broker nacked {self.nacked} messages")
        return self.t1 - self.t0

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_fail(self, _conn: Any, exc: BaseException) -> None:
        self.error = exc
        self.conn.ioloop.stop()

    def _on_closed(self, _conn: Any, reason: BaseException) -> None:
        if self.acked + self.nacked < self.n and self.error is None:
            self.error = RuntimeError(f"connection closed early: {reason!r}")
        self.conn.ioloop.stop()

    def _on_timeout(self) -> None:
        self.error = BenchTimeout(f"timed out after {self.deadline.seconds:.0f} s publishing "
                                  f"({self.acked} of {self.n} confirmed)")
        self.conn.close()

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._start())

    def _start(self) -> None:
        self.t0 = time.perf_counter()
        self._fill()

    def _fill(self) -> None:
        props = self.pika.BasicProperties(delivery_mode=2, content_type="application/json")
        while self.published < self.n and len(self.unconfirmed) < self.window:
            self.published += 1
            self.channel.basic_publish("", self.queue, message(self.published), props)
            self.unconfirmed.add(self.published)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = range(self.low, tag + 1) if method.multiple else (tag,)
        hits = 0
        for t in tags:
            if t in self.unconfirmed:
                self.unconfirmed.discard(t)
                hits += 1
        if isinstance(method, self.pika.spec.Basic.Ack):
            self.acked += hits
        else:
            self.nacked += hits
        if method.multiple:
            self.low = tag + 1
        if self.acked + self.nacked == self.n:
            self.t1 = time.perf_counter()
            self.conn.close()
        else:
            self._fill()


def bench_pika(args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    """Raw RabbitMQ publish/consume ceilings; see the module docstring."""
    import pika

    with fresh_vhost() as vhost:
        params = pika.URLParameters(amqp_url(args.amqp, vhost))
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            for q in ("peers-async", "peers-sync"):
                ch.queue_declare(q, durable=True)
            phases: dict[str, dict[str, Any]] = {}

            def measure(name: str, jobs: int, body: Callable[[], float]) -> None:
                cpu0, srv0 = {"client": self_cpu()}, server_cpu(proc_table())
                seconds = body()
                phases[name] = {"jobs": jobs, "seconds": round(seconds, 3),
                                "rate": round(jobs / seconds, 1),
                                "cpu_seconds": delta({"client": self_cpu()}, cpu0),
                                "server_cpu_seconds": delta(server_cpu(proc_table()), srv0)}
                log.info("%s: %.0f/s", name, jobs / seconds)

            measure("publish_async_confirms", args.jobs, AsyncConfirmPublisher(
                params, "peers-async", args.jobs, args.window, deadline).run)

            def publish_each() -> float:
                ch.confirm_delivery()
                props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
                t0 = time.perf_counter()
                for i in range(args.confirm_jobs):
                    ch.basic_publish("", "peers-sync", message(i), props)  # waits for the ack
                    deadline.remaining("publishing with a confirm per message")
                return time.perf_counter() - t0

            measure("publish_confirm_each", args.confirm_jobs, publish_each)

            def consume() -> float:
                cch = conn.channel()
                cch.basic_qos(prefetch_count=args.prefetch)
                got = [0]

                def on_message(c: Any, method: Any, _props: Any, _body: bytes) -> None:
                    c.basic_ack(method.delivery_tag)
                    got[0] += 1

                t0 = time.perf_counter()
                cch.basic_consume("peers-async", on_message)
                while got[0] < args.jobs:
                    conn.process_data_events(time_limit=min(1.0, deadline.remaining("consuming")))
                seconds = time.perf_counter() - t0
                cch.close()
                return seconds

            measure(f"consume_prefetch{args.prefetch}_ack", args.jobs, consume)
        finally:
            if conn.is_open:
                conn.close()
    a = phases["publish_async_confirms"]
    return {"seconds": a["seconds"], "cpu_seconds": a["cpu_seconds"],
            "server_cpu_seconds": a["server_cpu_seconds"],
            "rates": {k: p["rate"] for k, p in phases.items()}, "phases": phases,
            "settings": {"delivery_mode": 2, "queue": "durable, classic, default exchange",
                         "async_window": args.window, "confirm_each_jobs": args.confirm_jobs,
                         "prefetch": args.prefetch, "body_bytes": len(message(args.jobs))},
            "versions": versions("pika") | {"rabbitmq": rabbitmqctl("version")}}


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(DEFAULT_JOBS))
    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_JOBS.items())
    p.add_argument("--jobs", type=int, help=f"jobs/messages to measure (default: {defaults})")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up after this many seconds, setup included (default 600)")
    p.add_argument("--warmup", type=int, default=2,
                   help="unmeasured tasks run first, celery/parsl (default 2)")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672",
                   help="RabbitMQ URL without vhost (default: guest on 127.0.0.1)")
    p.add_argument("--pg-admin", default="postgresql://postgres:postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL URL allowed to create databases")
    p.add_argument("--celery-wait", choices=sorted(CELERY_WAITS.keys() - {"noresult"}),
                   default="db", help="celery: how the client waits for results (default db: "
                   "count rows in PostgreSQL; get: AsyncResult.get() per task)")
    p.add_argument("--confirm-jobs", type=int, default=3000,
                   help="pika: messages for the confirm-per-message phase (default 3000)")
    p.add_argument("--window", type=int, default=1000,
                   help="pika: most unconfirmed messages in flight when pipelining (default 1000)")
    p.add_argument("--prefetch", type=int, default=50, help="pika: consumer prefetch (default 50)")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = DEFAULT_JOBS[args.kind]
    for name in ("jobs", "timeout", "confirm_jobs", "window", "prefetch"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one kind and print its JSON."""
    args = parse_args(argv)
    # Our own progress at INFO; the peers' libraries only from WARNING: pika is chatty at INFO
    # and parsl sets its loggers to DEBUG for its own log file in the run dir.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("peers %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == log.name)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    log.setLevel(logging.INFO)
    deadline = Deadline(args.timeout)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "celery": lambda: bench_celery(args, deadline, results=True),
        "celery-noresult": lambda: bench_celery(args, deadline, results=False),
        "parsl": lambda: bench_parsl(args, deadline),
        "spawn": lambda: bench_spawn(args, deadline),
        "pika": lambda: bench_pika(args, deadline),
    }
    try:
        out = runners[args.kind]()
    except BenchTimeout as exc:
        log.error("%s: %s", args.kind, exc)
        return 3
    seconds = out.pop("seconds")
    cpu = out.pop("cpu_seconds")
    result = {"kind": args.kind, "jobs": args.jobs, "seconds": round(seconds, 3),
              "rate": round(args.jobs / seconds, 1), "cpu_seconds": cpu,
              "cpu_per_job_ms": round(sum(cpu.values()) / args.jobs * 1000, 3), **out}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
