"""`tower rerun`: remake a cataloged file from its provenance record alone, and compare.

The record (tower.model.provenance) holds the production's templates with the tower's
variables, the container and the input files by adler32. A rerun here fetches each input
from a good replica whose checksum is the record's and runs the payload with the pilot's
own code (pilots.payload.Payload) in a scratch directory; a rerun at a site submits one
batch job there running `pilot --rerun` (the same code), its inputs read where the site's
storage element holds them (a replica with the record's adler32), and reads its report
back. Either compares the output with the catalog: `identical` (same size and adler32) or
`differs`, naming what the two records disagree on (image digest, software, inputs...).
Nothing is written: not the catalog, not a job, not a record; a rerun at a site removes
what it left there.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Dataset
from pilots.containers import BUILTIN
from pilots.main import RERUN_CLAIM
from pilots.payload import Payload
from sites.batch import BatchState, PilotRequest
from tower.errors import ConfigError, NotFound, TransferError
from tower.loops import placement
from tower.loops.factory import pilot_command
from tower.model import provenance
from tower.runtime import Runtime
from transfer.paths import inside

IDENTICAL, DIFFERS, FAILED = "identical", "differs", "failed"
#: The most files `--sample` reruns at once.
MAX_SAMPLE = 10_000


@dataclass
class Rerun:
    """What one rerun gave."""

    lfn: str
    verdict: str
    #: The catalog's size and adler32, and the rerun's (None: it made no such file).
    size: int
    adler32: str
    new_size: int | None = None
    new_adler32: str | None = None
    #: What the rerun's record differs in from the file's (image digest, inputs...).
    differences: list[str] = field(default_factory=list)
    #: Why the rerun failed (its payload's ending and log tail, or an input not fetched).
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rerun_here(runtime: Runtime, lfn: str, images: str | None = None,
               scratch: Path | None = None) -> Rerun:
    """Remake the file `lfn` on this machine and compare it with the catalog's."""
    with Session(runtime.engine) as session:
        entry, record = provenance.of_file(session, lfn)
        replicas = {item["lfn"]: placement.replicas_of(session, item["lfn"])
                    for item in record["inputs"]}
    result = Rerun(lfn, FAILED, entry.size, entry.adler32)
    with tempfile.TemporaryDirectory(prefix="gridtower-rerun-", dir=scratch) as directory:
        root = Path(directory)
        try:
            inputs = _fetch(runtime, record["inputs"], replicas, root / "inputs")
        except TransferError as exc:
            result.reason = str(exc)
            return result
        claim = _claim(runtime, record, entry, inputs, images, record["site"], builtin=True)
        payload = Payload(claim, claim["pilot_values"], root / "work", root / "storage")
        report = payload.run()
    return _compared(result, entry.name, record, report, inputs)


def rerun_at(runtime: Runtime, lfn: str, site: str, timeout: float | None = None,
             pause: float = 1.0) -> Rerun:
    """Remake the file `lfn` at `site` in one batch job, and compare it with the catalog's;
    `timeout`: seconds it may take in all (default: its walltime and ten minutes)."""
    settings = runtime.config.sites.get(site)
    if settings is None:
        raise ConfigError(f"--site: no site {site!r} in sites.yaml", field="site")
    with Session(runtime.engine) as session:
        entry, record = provenance.of_file(session, lfn)
        held = {item["lfn"]: item for item in placement.input_paths(
            session, runtime.config, [item["lfn"] for item in record["inputs"]], site)}
        catalog = {item["lfn"]: item for item in provenance.inputs_of(session, list(held))}
    result = Rerun(lfn, FAILED, entry.size, entry.adler32)
    inputs = []
    for item in record["inputs"]:
        if item["lfn"] not in held or catalog[item["lfn"]]["adler32"] != item["adler32"]:
            result.reason = (f"input {item['lfn']}: no replica with the record's adler32 "
                             f"{item['adler32']} at site {site}'s storage element (sites.yaml "
                             "`data`); rerun it --here, which fetches it")
            return result
        inputs.append({**item, "path": held[item["lfn"]]["path"]})
    claim = _claim(runtime, record, entry, inputs, None, site, builtin=False)
    name = uuid.uuid4().hex[:16]
    storage = PurePosixPath(settings.storage) / "reruns"
    report_path, scratch = storage / f"{name}.json", PurePosixPath(settings.scratch)
    request = PilotRequest(f"rerun-{name}", [
        *pilot_command(settings), "--rerun", str(report_path), "--scratch", str(scratch),
        "--storage", str(storage / name)], {RERUN_CLAIM: json.dumps(claim)})
    batch, runner = runtime.batch_system(site), runtime.runner(site)
    batch_id = batch.submit(request)
    try:
        deadline = time.monotonic() + (timeout or record["walltime"] + 600)
        while batch.statuses([batch_id])[batch_id].state != BatchState.ENDED:
            if time.monotonic() > deadline:
                batch.cancel([batch_id])
                result.reason = f"not ended at site {site} in time (batch job {batch_id})"
                return result
            time.sleep(pause)
        read = runner.run(["cat", "--", str(report_path)])
        if read.code != 0:
            result.reason = (f"the rerun at site {site} left no report (batch job {batch_id}; "
                             f"its log: {batch.log_path(request.pilot_id)})")
            return result
        report = json.loads(read.stdout)
    finally:
        runner.run(["rm", "-rf", "--", str(storage / name), str(report_path),
                    str(scratch / f"rerun-{name}")])
    return _compared(result, entry.name, record, report, inputs)


def _compared(result: Rerun, name: str, record: dict[str, Any], report: dict[str, Any],
              inputs: list[dict[str, Any]]) -> Rerun:
    """`result` with the rerun's `report` compared: its output `name` with the catalog's,
    and what it observed with the `record`."""
    seen = provenance.observed({"site": record["site"], "pilot": record["pilot"]},
                               report.get("provenance") or {}, inputs)
    result.differences = provenance.differences(record, {**record, **seen})
    made = {output["name"]: output for output in report["outputs"]}
    if name not in made:
        result.reason = (f"the payload ended {report['ending']} (exit code "
                         f"{report['exit_code']}, signal {report['signal']}) without "
                         f"{name}: {report['reason'] or ''}\n{report['log_tail']}").strip()
        return result
    output = made[name]
    result.new_size, result.new_adler32 = output["size"], output["adler32"]
    same = (output["size"], output["adler32"]) == (result.size, result.adler32)
    result.verdict = IDENTICAL if same else DIFFERS
    return result


def _claim(runtime: Runtime, record: dict[str, Any], entry: CatalogFile,
           inputs: list[dict[str, Any]], images: str | None, site: str | None,
           builtin: bool) -> dict[str, Any]:
    """The claim a pilot would have been given, from the record: the production's templates
    and the tower's variables (and the pilot's, the record's site and pilot); the container
    with `site`'s template of its runtime and images root (here, when the site does not
    offer it: the built-in, and `images`)."""
    templates = record["templates"]
    claim: dict[str, Any] = {
        "job": entry.job_id or 0, "attempt": record["attempt"],
        "production": record["production"], "command": templates["command"],
        "steering": templates["steering"] or {}, "environment": templates["environment"] or {},
        "variables": record["variables"], "outputs": templates["outputs"] or [],
        "walltime": record["walltime"], "cores": record["cores"], "memory": record["memory"],
        "inputs": [{"lfn": item["lfn"], "name": Path(item["lfn"]).name, "path": item["path"]}
                   for item in inputs],
        "pilot_values": {"site": record["site"], "pilot_id": record["pilot"]},
    }
    container = record.get("container")
    if container:
        settings = runtime.config.sites.get(site or "")
        offered = settings.pilot.containers if settings else None
        template = offered.runtimes.get(container["runtime"]) if offered else None
        if template is None and not builtin:
            on_offer = settings.pilot.runtime_summary() if settings else "nothing"
            raise ConfigError(f"--site: site {site} offers no {container['runtime']} runtime "
                              f"(it offers {on_offer})", field="site")
        claim["container"] = {"runtime": container["runtime"], "image": container["image"],
                              "images": images or (offered.images if offered else None),
                              "template": template or BUILTIN.get(container["runtime"])}
    return claim


def _fetch(runtime: Runtime, wanted: list[dict[str, Any]],
           replicas: dict[str, list[tuple[str, str, int, str]]],
           directory: Path) -> list[dict[str, Any]]:
    """Copy each input from a good replica, one whose adler32 is the record's first (the
    file as it was read); when the catalog holds it no more (a newer attempt replaced it),
    the catalog's own, which the rerun's record then names, so `differs` says "inputs".
    Each copy is checked against the checksum it was chosen for. Returns the inputs with
    their local path; TransferError when one cannot be fetched whole."""
    directory.mkdir(parents=True, exist_ok=True)
    fetched = []
    for item in wanted:
        problems = []
        candidates = sorted(replicas[item["lfn"]], key=lambda row: row[3] != item["adler32"])
        for destination, path, size, adler32 in candidates:
            local = str(inside(directory, Path(item["lfn"]).name, "rerun inputs"))
            try:
                got = runtime.transfer(destination).get(path, local)
            except TransferError as exc:
                problems.append(str(exc))
                continue
            if (got.size, got.adler32) == (size, adler32):
                fetched.append({**item, "size": size, "adler32": adler32, "path": local})
                break
            problems.append(f"{destination}:{path} has adler32 {got.adler32}, not {adler32}")
        else:
            raise TransferError(f"input {item['lfn']}: no good replica to fetch" +
                                (f" ({'; '.join(problems)})" if problems else ""))
    return fetched


def sample(runtime: Runtime, dataset: str, count: int, seed: int | None = None,
           images: str | None = None, site: str | None = None) -> dict[str, Any]:
    """Rerun `count` random files of `dataset` here (or at `site`); the reproducibility
    figure is the fraction of them identical."""
    with Session(runtime.engine) as session:
        found = session.exec(select(Dataset.id).where(Dataset.name == dataset)).first()
        if found is None:
            raise NotFound(f"no dataset {dataset!r} in the catalog", field="dataset")
        lfns = list(session.exec(select(CatalogFile.lfn).where(
            CatalogFile.dataset_id == found).order_by(col(CatalogFile.lfn))).all())
    chosen = sorted(random.Random(seed).sample(lfns, min(count, len(lfns), MAX_SAMPLE)))
    reruns = [rerun_at(runtime, lfn, site) if site else rerun_here(runtime, lfn, images)
              for lfn in chosen]
    identical = sum(1 for item in reruns if item.verdict == IDENTICAL)
    return {"dataset": dataset, "files": len(lfns), "rerun": len(reruns),
            "identical": identical,
            "reproducibility": identical / len(reruns) if reruns else None,
            "reruns": [item.as_dict() for item in reruns]}
