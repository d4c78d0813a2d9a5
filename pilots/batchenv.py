"""What the batch system tells a pilot about its own job: the time it has left.

A pilot's walltime is the batch system's, not the one it was told: the job
may have started late in its allocation, or the admin changed the limit. The
pilot drains against the earlier of the two.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess

log = logging.getLogger(__name__)


def time_left() -> float | None:
    """Seconds until the batch system ends this job, or None when it does not say."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        done = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%L"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot ask squeue for the time left: %s", exc)
        return None
    return parse_slurm_time(done.stdout.strip()) if done.returncode == 0 else None


def parse_slurm_time(text: str) -> float | None:
    """SLURM's times: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; None for UNLIMITED,
    NOT_SET, INVALID."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        return None
    days, *parts = match.groups()
    numbers = [int(part) for part in parts if part is not None]
    if days is not None:             # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:          # HH:MM:SS
        hours, minutes, seconds = numbers
    else:                            # MM[:SS]
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)
