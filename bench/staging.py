"""Stage-out throughput: verified copies (write under a temporary name, rename, read back for
size and adler32) to a local destination and over SFTP to an OpenSSH server on loopback,
with 1 and 4 transfers at once.

    .venv/bin/python bench/staging.py [--files 200] [--size-mb 1] [--repeat 3]

Prints, per destination and parallelism, the median time and MB/s and files/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import running_sshd  # noqa: E402
from tower.config import DestinationSettings  # noqa: E402
from transfer.base import open_transfer  # noqa: E402


def once(settings: DestinationSettings, sources: list[Path], parallel: int) -> float:
    transfer = open_transfer(settings)
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            infos = list(pool.map(lambda item: transfer.put(str(item[1]), f"run/{item[0]}"),
                                  enumerate(sources)))
        elapsed = time.perf_counter() - started
    finally:
        transfer.close()
    assert len(infos) == len(sources)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        sources = []
        for number in range(args.files):
            path = base / "src" / f"f{number}.dat"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(int(args.size_mb * (1 << 20))))
            sources.append(path)
        with running_sshd(base / "sshd") as daemon:
            access = daemon.server
            for parallel in (1, 4):
                targets = {
                    "local": lambda run: DestinationSettings(url=f"local:{base / run}"),
                    "sftp": lambda run, parallel=parallel: DestinationSettings(
                        url=f"sftp://{access.user}@{access.host}:{access.port}{base / run}",
                        key_file=str(access.key_file), known_hosts=str(access.known_hosts),
                        parallel=parallel),
                }
                for kind, make in targets.items():
                    times = [once(make(f"{kind}-{parallel}-{n}"), sources, parallel)
                             for n in range(args.repeat)]
                    median = statistics.median(times)
                    megabytes = args.files * args.size_mb
                    print(f"{kind:<6} parallel {parallel}: {args.files} x {args.size_mb:g} MB "
                          f"in median {median:.2f}s ({min(times):.2f}-{max(times):.2f}) = "
                          f"{megabytes / median:.0f} MB/s, {args.files / median:.0f} files/s")


if __name__ == "__main__":
    main()
