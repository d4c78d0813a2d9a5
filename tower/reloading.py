"""Reloading a running tower's sites.yaml and retry policies (SIGHUP, `tower reload`).

The files are read whole and checked as at start; a bad one is refused, its error (file
and key) logged, and the configuration in force stays. A good one replaces the sites, the
policies and `retry.policy` in one assignment (tower.runtime.Runtime.swap_config): a loop
reading the configuration sees the old or the new, never half of each. Pilots and jobs
are rows in the database, untouched. A site may leave sites.yaml only once nothing is in
flight there (no pilot alive, no job assigned, queued, running or staging at it): its
pilots' ends, its outputs and its queue need its settings, so such a file is refused too,
saying to set `enabled: false` first and remove the site once it is empty. Other keys of
tower.yaml (database, broker, api, ...) take effect at the next start, and a reload that
finds them changed says so.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from tower.config import TowerConfig, load_config
from tower.errors import ConfigError, GridtowerError
from tower.model import fleet
from tower.model.models import Job
from tower.model.states import JOB_AT_SITE, JobState
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: What a reload replaces.
RELOADED = ("sites", "policies", "retry")
#: What is the running process's own, never read from the files again.
KEPT = ("path", "home", "sites_path")
#: Jobs that hold a site: its queue, a pilot of it, or its storage.
IN_FLIGHT = JOB_AT_SITE | {JobState.RUNNING, JobState.STAGING}


def reload(runtime: Runtime) -> bool:
    """Read the configuration files again and put what they say in force; False (logged)
    when they are refused, and the old configuration stays."""
    old = runtime.config
    try:
        new = load_config(old.path)
        _check_removals(runtime, set(old.sites) - set(new.sites), new)
    except GridtowerError as exc:
        log.error("reload refused, the configuration in force stays: %s", exc)
        return False
    changes = describe(old, new)
    runtime.swap_config(old.model_copy(update={key: getattr(new, key) for key in RELOADED}))
    log.info("reload: %s", "; ".join(changes) if changes else "nothing changed")
    for key in restart_needed(old, new):
        log.warning("reload: %s: %s changed; it takes effect at the next start", old.path, key)
    return True


def _check_removals(runtime: Runtime, removed: set[str], new: TowerConfig) -> None:
    """Refuse to drop a site that still has work in flight (ConfigError naming it)."""
    if not removed:
        return
    with Session(runtime.engine) as session:
        for site in sorted(removed):
            pilots = len(fleet.active(session, site))
            jobs = session.exec(select(func.count()).select_from(Job).where(
                Job.site == site, col(Job.state).in_(IN_FLIGHT))).one()
            if pilots or jobs:
                sites = new.sites_path
                raise ConfigError(
                    f"{sites}: sites.{site}: removed while {pilots} pilots are alive and {jobs} "
                    f"jobs are in flight there: set `enabled: false` first, and remove it once "
                    "`tower sites` shows it empty", field=f"sites.{site}")


def describe(old: TowerConfig, new: TowerConfig) -> list[str]:
    """What a reload changes, in words: sites added, removed and changed (with the keys),
    policies likewise, and the default policy."""
    changes = []
    for kind, before, after in (("site", old.sites, new.sites),
                                ("policy", old.policies, new.policies)):
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = [f"{name} ({', '.join(_keys(before[name], after[name]))})"
                   for name in sorted(set(before) & set(after)) if before[name] != after[name]]
        for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                changes.append(f"{kind} {verb}: {', '.join(names)}")
    if old.retry.policy != new.retry.policy:
        changes.append(f"retry.policy: {old.retry.policy} -> {new.retry.policy}")
    return changes


def restart_needed(old: TowerConfig, new: TowerConfig) -> list[str]:
    """Keys of tower.yaml that changed but only a restart applies."""
    keys = []
    for key in type(old).model_fields:
        if key in RELOADED or key in KEPT:
            continue
        before, after = getattr(old, key), getattr(new, key)
        if key == "api":  # `tower run` fills in the URL it serves at
            before = before.model_copy(update={"url": after.url})
        if before != after:
            keys.append(key)
    return keys


def _keys(before: Any, after: Any) -> list[str]:
    return [key for key in type(before).model_fields
            if getattr(before, key) != getattr(after, key)] or ["settings"]
