"""The post step: a production's own validation of each output, run by the tower.

As LZ's "Post" jobs do, it checks an output outside the payload, once the
output is staged and cataloged: a non-zero exit rejects the output, which is
then marked bad in the catalog and sent to the retry policy (class
`validation`). The command is an argv template — never a shell string.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pilots.rendering import render
from tower.management.specs import JobPlan, ProductionSpec, job_variables
from tower.model.models import Job

#: Characters of the command's output kept in the rejection reason.
OUTPUT_KEPT = 300


def rejection(spec: ProductionSpec, job: Job, attempt: int, file: Path, name: str) -> str | None:
    """Run the post step on `file`; None if it accepts the output, else why not."""
    if not spec.post:
        return None
    plan = JobPlan(job.index, job.seed, job.first_event, job.events)
    variables = {**job_variables(spec, plan, attempt), "file": str(file), "name": name}
    argv = [render(argument, variables) for argument in spec.post]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=spec.post_timeout,
                              stdin=subprocess.DEVNULL, cwd=file.parent)
    except subprocess.TimeoutExpired:
        return f"post step did not finish within {spec.post_timeout}s"
    except OSError as exc:
        return f"post step {argv[0]}: {exc.strerror or exc}"
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip()[-OUTPUT_KEPT:]
    return f"post step rejected {name} (exit code {done.returncode})" + (f": {said}" if said
                                                                       else "")
