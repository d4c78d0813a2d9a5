"""Provenance records: how each attempt ran, kept whole in the database, and the record a
cataloged file points to (by its job and attempt).

The pilot says what only it knows — the rendered command, steering files and
environment, the container image as it resolved it and its digest, the host — and the
tower adds what it knows better: the production's templates and variables, the software,
the stream, seed and first event, the site and pilot, and the input files with their
adler32 from the catalog. Hashes are the tower's own (sha256 of what it stores): a pilot
is not trusted to name them. `tower rerun` runs a file's record again (tower.management
.rerun); `differences` says what two records disagree on.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import Session, col, select

from catalog.errors import NotFound
from catalog.models import CatalogFile
from tower.model.db import bulk_insert
from tower.model.models import Provenance

#: What a rerun compares, in the order `differs` names it: key of the record -> label.
COMPARED = (("image_digest", "image digest"), ("image", "image"), ("software", "software"),
            ("inputs", "inputs"), ("templates", "templates or variables"),
            ("command", "command"), ("steering", "steering files"),
            ("environment", "environment"))
#: Environment variables a run sets for itself, not compared.
OWN_VARIABLES = ("GRIDTOWER_JOB", "GRIDTOWER_ATTEMPT")


def sha256(value: str | Sequence[str] | Mapping[str, str]) -> str:
    """The sha256 of a text, or of a list or mapping of texts in canonical JSON."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def software(text: str) -> dict[str, str | None]:
    """A production's `software` as name and version: `toysim 1.0`, `geant4@11.2`."""
    for separator in (" ", "@", "/"):
        name, found, version = text.strip().rpartition(separator)
        if found and name.strip() and version:
            return {"name": name.strip(), "version": version}
    return {"name": text, "version": None}


def build(spec: Mapping[str, Any], job: Mapping[str, Any], variables: Mapping[str, Any],
          attempt: int, where: Mapping[str, str | None], seen: Mapping[str, Any],
          inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The record of one attempt: `spec` its production's (a dict), `job` its stream, seed,
    first event and events, `where` its site and pilot, `seen` what its pilot reported
    (pilots.payload: host, command, argv, steering, environment, container), `inputs` the
    catalog's lfn, size and adler32 of each file it read."""
    return {
        "production": spec["name"], "dataset": spec.get("dataset") or spec["name"],
        "software": software(spec["software"]),
        "stream": job["index"], "seed": job["seed"], "first_event": job["first_event"],
        "events": job["events"], "attempt": attempt,
        # what a rerun renders again: the production's templates with the tower's variables
        "templates": {key: spec.get(key) for key in
                      ("command", "steering", "environment", "outputs")},
        "variables": dict(variables),
        "walltime": spec["walltime"], "cores": spec.get("cores") or 1,
        "memory": spec.get("memory"),
        **observed(where, seen, inputs),
    }


def observed(where: Mapping[str, str | None], seen: Mapping[str, Any],
             inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The part of a record a run observes (the rest is the tower's): where it ran, what
    its pilot rendered and resolved, and the inputs it read; hashes are computed here."""
    steering = dict(seen.get("steering") or {})
    command = list(seen.get("command") or [])
    environment = dict(seen.get("environment") or {})
    return {
        "site": where.get("site"), "pilot": where.get("pilot"), "host": seen.get("host"),
        "container": dict(seen.get("container") or {}) or None,
        "command": command, "argv": list(seen.get("argv") or []),
        "steering": {name: {"sha256": sha256(text), "text": text}
                     for name, text in sorted(steering.items())},
        "environment": environment,
        "inputs": [{"lfn": item["lfn"], "size": item["size"], "adler32": item["adler32"]}
                   for item in inputs],
        "hashes": {"command": sha256(command), "environment": sha256(environment)},
    }


def save(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store records: dicts of job_id, attempt, production_id and record. An attempt is
    reported once (the tower refuses a second report), so it has one record."""
    bulk_insert(session, Provenance, rows)


def inputs_of(session: Session, lfns: Sequence[str]) -> list[dict[str, Any]]:
    """The lfn, size and adler32 of each of `lfns` the catalog holds, in their order."""
    if not lfns:
        return []
    found = {lfn: (size, adler32) for lfn, size, adler32 in session.exec(
        select(CatalogFile.lfn, CatalogFile.size, CatalogFile.adler32)
        .where(col(CatalogFile.lfn).in_(list(lfns)))).all()}
    return [{"lfn": lfn, "size": found[lfn][0], "adler32": found[lfn][1]}
            for lfn in lfns if lfn in found]


def of_attempt(session: Session, job_id: int, attempt: int) -> dict[str, Any] | None:
    row = session.exec(select(Provenance.record).where(
        Provenance.job_id == job_id, Provenance.attempt == attempt)).first()
    return dict(row) if row is not None else None


def of_file(session: Session, lfn: str) -> tuple[CatalogFile, dict[str, Any]]:
    """A cataloged file and the record of the attempt that made it; NotFound naming `lfn`
    when the catalog has no such file or no record of how it was made."""
    entry = session.exec(select(CatalogFile).where(CatalogFile.lfn == lfn)).first()
    if entry is None:
        raise NotFound(f"no file {lfn!r} in the catalog", field="lfn")
    record = of_attempt(session, entry.job_id, entry.attempt) \
        if entry.job_id is not None else None
    if record is None:
        raise NotFound(f"{lfn}: no provenance record of the attempt that made it (made "
                       "before records were kept)", field="lfn")
    return entry, record


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What two records of the same file disagree on, as `rerun` names it: the image digest,
    the image, the software, the inputs (their adler32), the templates and the tower's
    variables; and, for two runs in containers (whose payloads see the same paths at every
    site), the rendered command, steering files (sha256) and environment. A bare payload's
    rendered files name its site's work dir: they differ from run to run by design."""
    def facts(record: Mapping[str, Any]) -> dict[str, Any]:
        container = record.get("container") or {}
        variables = {key: value for key, value in (record.get("variables") or {}).items()
                     if key != "attempt"}
        return {
            "image_digest": container.get("digest"), "image": container.get("image"),
            "software": record.get("software"),
            "inputs": [(item["lfn"], item["adler32"]) for item in record.get("inputs", [])],
            "templates": [record.get("templates"), variables],
            "command": record.get("command"),
            "steering": {name: item["sha256"]
                         for name, item in (record.get("steering") or {}).items()},
            "environment": {name: value for name, value in
                            (record.get("environment") or {}).items()
                            if name not in OWN_VARIABLES},
        }
    before, after = facts(old), facts(new)
    rendered = bool(old.get("container")) and bool(new.get("container"))
    found = []
    for key, label in COMPARED:
        if key in ("command", "steering", "environment") and not rendered:
            continue
        if before[key] != after[key]:
            found.append(f"{label}: {_short(before[key])} -> {_short(after[key])}"
                         if key in ("image_digest", "image", "software") else label)
    return found


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(str(part) for part in value.values() if part is not None)
    return str(value)


def rerun_command(lfn: str) -> str:
    """The command that remakes `lfn` here from its record and compares (shell-quoted)."""
    return f"tower rerun --here {shlex.quote(lfn)}"


def described(session: Session, lfn: str) -> dict[str, Any]:
    """A file, the record of the attempt that made it, and how to rerun it: what the API and
    the file's page show."""
    entry, record = of_file(session, lfn)
    return {"lfn": entry.lfn, "size": entry.size, "adler32": entry.adler32,
            "job": entry.job_id, "attempt": entry.attempt, "provenance": record,
            "rerun": rerun_command(entry.lfn)}
