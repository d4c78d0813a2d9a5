"""The API's serving stack under slow and silent clients (issue 17, items 2 and 3), the old
one (cheroot, as of 862815c) against this tree's: a legitimate client's latency while 50
connections stay silent or 30 send a header line every 2 s, over TLS and plain HTTP; and
requests/s of a `requests` client with no attack. Loopback only; every attack bounded.

    PYTHONPATH=. .venv/bin/python bench/slowclients.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import tls_api, write_home  # noqa: E402
from tests.security.attacks import idle_connections, slow_headers  # noqa: E402
from tower.auth import ca  # noqa: E402

OLD_COMMIT = "862815c"
ROOT = Path(__file__).resolve().parents[1]
#: A legitimate client's requests per attack, one every PAUSE seconds, each given TIMEOUT.
PROBES, PAUSE, TIMEOUT = 20, 0.25, 15.0
#: An attack scenario ends after this long, whatever the probes got through.
SCENARIO_SECONDS = 60.0
THROUGHPUT_SECONDS = 5.0


@contextmanager
def tower(tree: Path, home: Path, tls: bool) -> Iterator[tuple[str, dict[str, object]]]:
    """`tower serve` of the code in `tree` as a process; its API URL and client options."""
    api = tls_api(crl=False) if tls else {"bind": "127.0.0.1", "port": 0}
    config = write_home(home, f"sqlite:///{home / 'tower.db'}", api=api, access={
        "roles": [{"dn": "CN=reader,OU=users,O=gridtower", "role": "reader"}]})
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tower.cli import main; sys.exit(main())",
         "--config", str(config), "serve"], cwd=tree, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(tree)})
    try:
        url = ""
        assert process.stderr is not None
        while "API at " not in url:
            url = process.stderr.readline()
            if not url:
                raise RuntimeError(f"tower serve in {tree} ended before serving")
        options: dict[str, object] = {"timeout": TIMEOUT}
        if tls:
            options.update(verify=str(home / "ca" / "ca.crt"),
                           cert=(str(home / "ca/issued/reader.crt"),
                                 str(home / "ca/issued/reader.key")))
        yield url.split("API at ", 1)[1].strip() + "/api/v1/productions", options
    finally:
        process.terminate()
        process.wait(timeout=30)


def latencies(url: str, options: dict[str, object]) -> tuple[list[float], int]:
    """Seconds each probe took (a new connection each, as a pilot's call), and failures
    (a timed-out probe counts as TIMEOUT)."""
    taken: list[float] = []
    failed = 0
    end = time.monotonic() + SCENARIO_SECONDS
    for _ in range(PROBES):
        if time.monotonic() > end:
            break
        start = time.monotonic()
        try:
            ok = requests.get(url, **options).status_code == 200  # type: ignore[arg-type]
        except requests.RequestException:
            ok = False
        taken.append(time.monotonic() - start)
        failed += not ok
        time.sleep(PAUSE)
    return taken, failed


def throughput(url: str, options: dict[str, object]) -> float:
    with requests.Session() as session:
        count, end = 0, time.monotonic() + THROUGHPUT_SECONDS
        while time.monotonic() < end:
            session.get(url, **options).raise_for_status()  # type: ignore[arg-type]
            count += 1
    return count / THROUGHPUT_SECONDS


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="slowclients-") as scratch:
        old = Path(scratch) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        attacks: dict[str, Callable[[int, bool], AbstractContextManager[object]]] = {
            "none": lambda port, tls: nullcontext(),
            "50 idle": lambda port, tls: idle_connections(port, 50),
            "30 slow heads": lambda port, tls: slow_headers(port, 30, tls),
        }
        rows = []
        for stack, tree in (("old (cheroot)", old), ("new (asyncio+h11)", ROOT)):
            for tls in (True, False):
                for attack, make in attacks.items():
                    home = Path(tempfile.mkdtemp(dir=scratch))
                    ca.init_ca(home / "ca", "bench CA")
                    ca.issue(home / "ca", "host", "server", days=1, hosts=["127.0.0.1"])
                    ca.issue(home / "ca", "user", "reader", days=1)
                    with tower(tree, home, tls) as (url, options):
                        port = int(url.split(":")[2].split("/")[0])
                        rate = throughput(url, options) if attack == "none" else None
                        with make(port, tls):
                            time.sleep(1)
                            taken, failed = latencies(url, options)
                    rows.append((stack, "TLS" if tls else "HTTP", attack, taken, failed, rate))
                    print(f"  {stack} {'TLS' if tls else 'HTTP'} {attack}: done",
                          file=sys.stderr, flush=True)
    print(f"{'stack':<18} {'api':<5} {'attack':<14} {'n':>3} {'fail':>4} {'median':>8} "
          f"{'mean':>8} {'p95':>8} {'p99':>8} {'max':>8} {'req/s':>7}")
    for stack, api, attack, taken, failed, rate in rows:
        ms = [1000 * value for value in taken]
        print(f"{stack:<18} {api:<5} {attack:<14} {len(ms):>3} {failed:>4} "
              f"{statistics.median(ms):>8.1f} {statistics.fmean(ms):>8.1f} "
              f"{percentile(ms, 0.95):>8.1f} {percentile(ms, 0.99):>8.1f} {max(ms):>8.1f} "
              f"{'' if rate is None else f'{rate:.0f}':>7}")
    print("latencies in ms of a new connection and one GET /api/v1/productions each "
          f"(client timeout {TIMEOUT:g} s); req/s: one requests.Session, keep-alive, "
          "no attack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
