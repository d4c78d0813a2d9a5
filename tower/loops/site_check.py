"""`tower sites check NAME`: can the tower work with this site? One line per check.

Every probe runs through the site's own runner, exactly as the factory will:
reaching the site, its batch commands, the pilot program, writing to the
scratch and storage paths, and the container runtimes and images root it offers; a
batch system reached by an API of its own (arc) takes its own steps (its CE's info, a
no-op job submitted, read and cleaned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sites.batch import BatchSystem
from sites.config import SiteConfig
from sites.runner import Runner
from tower.errors import BackendError

#: Finds a program on the site's PATH ($1, an argument).
FOUND = 'command -v -- "$1"'
#: Creates the directory if needed, writes and removes a file in it; the path is an
#: argument ($1), never part of the script text.
WRITABLE = 'mkdir -p -- "$1" && f="$1/.gridtower-check.$$" && : > "$f" && rm -f -- "$f"'


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def check_site(site: SiteConfig, batch: BatchSystem, runner: Runner,
               pilot_command: list[str]) -> list[Check]:
    """Every check of `site`; once the site cannot be reached, the rest are not tried."""
    access = _probe("access", runner, ["true"], f"reached {runner.where}")
    if not access.passed:
        return [access]
    checks = [access]
    for probe in batch.probes():
        checks.append(_step(probe.name, probe.step) if probe.step is not None
                      else _probe(probe.name, runner, probe.argv or ["true"], "runs"))
    checks.append(_probe("pilot program", runner, [*pilot_command, "--help"],
                         " ".join(pilot_command)))
    for key in ("scratch", "storage"):
        path = getattr(site, key)
        checks.append(_probe(f"{key} writable", runner, ["sh", "-c", WRITABLE, "check", path],
                             path))
    # what a containerised job needs: each runtime's program, and the images root
    for name, template in site.pilot.containers.runtimes.items():
        program = template["argv"][0]
        checks.append(_probe(f"runtime {name}", runner, ["sh", "-c", FOUND, "check", program],
                             program))
    images = site.pilot.containers.images
    if images:
        checks.append(_probe("images root", runner, ["test", "-d", images], images))
    return checks


def _step(name: str, step: Callable[[], str]) -> Check:
    try:
        return Check(name, True, step())
    except BackendError as exc:
        return Check(name, False, str(exc))


def _probe(name: str, runner: Runner, argv: list[str], success: str) -> Check:
    try:
        done = runner.run(argv, timeout=60)
    except BackendError as exc:
        return Check(name, False, str(exc))
    if done.code != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return Check(name, False, f"exit {done.code}: {lines[-1] if lines else 'no message'}")
    return Check(name, True, success)
