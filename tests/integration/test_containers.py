"""Productions in containers, for real: bubblewrap running a directory image built from
this machine's Python (examples/image.py), on local pilots and on SLURM; a missing image;
and `tower rerun` remaking cataloged files from their provenance records."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlmodel import Session, col, select

from catalog.models import CatalogFile
from pilots.checksums import adler32_file
from tests.cluster import SlurmCluster
from tests.conftest import missing_service
from tests.integration.conftest import EXAMPLES, LiveTower, assert_done_exactly_once
from tower.cli import main as tower_main
from tower.management import rerun
from tower.model.db import transaction
from tower.model.models import Attempt, Job, Provenance
from tower.model.states import JobState

pytestmark = [pytest.mark.one_database, pytest.mark.xdist_group("containers")]


@pytest.fixture(autouse=True)
def bubblewrap() -> None:
    if shutil.which("bwrap") is None:
        missing_service("bubblewrap (bwrap; scripts/services.sh installs it)")

def build(target: Path, marker: str) -> Path:
    """examples/image.py's build (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("image", EXAMPLES / "image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(target, marker)  # type: ignore[no-any-return]


#: What the probe payload writes: what it saw of the image, its work dir and its inputs.
PROBE = '''
import json, os, sys, zlib
out = sys.argv[1]
inputs = sorted(os.listdir("inputs")) if os.path.isdir("inputs") else []
seen = {"marker": open("/.gridtower-image").read().strip(), "cwd": os.getcwd(),
        "inputs": {name: "%08x" % (zlib.adler32(open("inputs/" + name, "rb").read()) & 0xFFFFFFFF)
                   for name in inputs},
        "host_home_visible": os.path.exists(sys.argv[2]),
        "steering": open("steering.json").read()}
with open(os.path.join(out, "probe_%s.json" % sys.argv[3]), "w") as stream:
    json.dump(seen, stream)
'''


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An images root holding `toysim`, a bubblewrap directory image with a probe script."""
    root = tmp_path_factory.mktemp("images")
    build(root / "toysim", "toysim image")
    (root / "toysim" / "opt" / "probe.py").write_text(PROBE)
    return root


def site(images: Path, **changes: Any) -> dict[str, Any]:
    return {"pilot": {"slots": 2, "cores": 2, "walltime": "10m", "drain_margin": 5,
                      "idle_timeout": 3,
                      "containers": {"images": str(images), "runtimes": ["bubblewrap"]}},
            **changes}


def contained(directory: Path, name: str, jobs: int, image: str = "toysim",
              **extra: Any) -> Path:
    """A toy simulation production run in `image` with bubblewrap: the image's python and
    its own copy of the simulation."""
    request = {
        "name": name, "software": "toysim 1.0",
        "command": ["${python}", "/opt/toysim/toysim.py", "--steering", "steering.json",
                    "--output-dir", "${output_dir}"],
        "steering": {"steering.json": '{"seed": ${seed}, "first_event": ${first_event}, '
                                      '"events": ${events}, "output": "decays_${index}.csv"}'},
        "events_total": jobs * 100, "events_per_job": 100, "walltime": "5m",
        "outputs": ["decays_*.csv"], "container": {"image": image, "runtime": "bubblewrap"},
        **extra,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def reruns(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    capsys.readouterr()
    code = tower_main(list(args))
    return code, json.loads(capsys.readouterr().out)


def test_a_production_runs_in_a_bubblewrap_image_and_every_file_reruns_identically(
        live_tower: Callable[..., LiveTower], images: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    tower = live_tower(site=site(images, data={"destination": "store",
                                               "path": str(home / "store")}))
    tower.submit(contained(tmp_path, "boxed", jobs=10))
    tower.drive(tower.all_ended, timeout=180)
    assert_done_exactly_once(tower.runtime.engine, jobs=10)
    with Session(tower.runtime.engine) as session:
        records = session.exec(select(Provenance)).all()
        files = session.exec(select(CatalogFile).order_by(col(CatalogFile.lfn))).all()
    assert len(records) == 10 and len(files) == 10
    record = records[0].record
    assert record["container"]["runtime"] == "bubblewrap"
    assert record["container"]["path"] == str(images / "toysim")
    assert record["container"]["digest"].startswith("sha256:")
    assert record["argv"][0] == "bwrap" and "/opt/toysim/toysim.py" in record["argv"]
    assert record["software"] == {"name": "toysim", "version": "1.0"}
    assert record["steering"]["steering.json"]["text"].startswith(f'{{"seed": {record["seed"]}')
    assert {"stream", "seed", "first_event", "site", "host", "pilot"} <= set(record)

    # a second production reads the first's files through the binds, in the same image
    probe = contained(tmp_path, "probe", jobs=1, inputs=["boxed"], outputs=["probe_*.json"])
    request = yaml.safe_load(probe.read_text())
    request["command"] = ["${python}", "/opt/probe.py", "${output_dir}", str(tmp_path),
                          "${index}"]
    probe.write_text(yaml.safe_dump(request))
    tower.submit(probe)
    tower.drive(tower.all_ended, timeout=120)
    with Session(tower.runtime.engine) as session:
        made = session.exec(select(CatalogFile).where(
            CatalogFile.name == "probe_0.json")).one()
        probe_record = session.exec(select(Provenance).where(
            Provenance.job_id == made.job_id)).one().record
    seen = json.loads((home / "store" / "probe" / "probe_0.json").read_text())
    assert seen["marker"] == "toysim image"          # the image's root
    assert seen["cwd"] == "/tmp/gridtower"           # its work dir, bound
    assert seen["host_home_visible"] is False        # nothing else of the host
    assert seen["inputs"] == {entry.name: entry.adler32 for entry in files}
    assert [item["adler32"] for item in probe_record["inputs"]] == \
        [entry.adler32 for entry in files]

    # every file of the dataset remade from its record alone: identical
    monkeypatch.setenv("TOWER_CONFIG", str(home / "tower.yaml"))
    code, summary = reruns("rerun", "--here", "--sample", "10", "boxed", "--json",
                           capsys=capsys)
    assert code == 0, summary
    assert (summary["rerun"], summary["identical"], summary["reproducibility"]) == (10, 10, 1.0)
    # so is the downstream file, its inputs fetched from their replicas by checksum, or
    # read at the site (in one batch job of the pilot program, which leaves nothing there)
    assert rerun.rerun_here(tower.runtime, made.lfn).verdict == rerun.IDENTICAL
    code, result = reruns("rerun", "--site", "local", made.lfn, "--json", capsys=capsys)
    assert (code, result["verdict"]) == (0, "identical"), result
    assert not (home / "site-storage" / "reruns").exists() or \
        not any((home / "site-storage" / "reruns").iterdir())
    with Session(tower.runtime.engine) as session:
        assert len(session.exec(select(CatalogFile)).all()) == 11  # the catalog untouched

    # the image's simulation changed (a new file in its place: the old is the host's link)
    script = images / "toysim" / "opt" / "toysim" / "toysim.py"
    text = script.read_text()
    script.unlink()
    script.write_text(text.replace("ELECTRON_MASS_MEV = 0.511", "ELECTRON_MASS_MEV = 0.611"))
    code, result = reruns("rerun", "--here", files[0].lfn, "--json", capsys=capsys)
    assert code == 1
    assert result["verdict"] == "differs"
    assert result["differences"][0].startswith(
        f"image digest: {record['container']['digest']} -> sha256:")
    assert "image digest" in str(result["differences"])
    script.unlink()
    script.write_text(text)  # the module's image as it was

    # an input remade since (as a newer attempt's output would replace it: new content,
    # the catalog's size and adler32 with it): the downstream file differs, in its inputs
    replaced = home / "store" / "boxed" / files[0].name
    replaced.write_text("remade\n")
    with transaction(tower.runtime.engine) as session:
        entry = session.get_one(CatalogFile, files[0].id)
        entry.size, entry.adler32 = replaced.stat().st_size, adler32_file(replaced)
        session.add(entry)
    again = rerun.rerun_here(tower.runtime, made.lfn)
    assert again.verdict == rerun.DIFFERS and again.differences == ["inputs"], again


def test_a_missing_image_is_a_setup_failure_retried_then_failed(
        live_tower: Callable[..., LiveTower], images: Path, tmp_path: Path) -> None:
    tower = live_tower(site=site(images))
    tower.submit(contained(tmp_path, "imageless", jobs=1, image="no-such-image",
                           retry={"max_attempts": 2}))
    tower.drive(tower.all_ended, timeout=120)
    with Session(tower.runtime.engine) as session:
        job = session.exec(select(Job)).one()
        tries = session.exec(select(Attempt).order_by(col(Attempt.number))).all()
    assert job.state in (JobState.FAILED, JobState.HELD)
    assert [attempt.outcome for attempt in tries] == ["setup", "setup"]
    assert "image 'no-such-image' not found" in (tries[0].reason or "")
    # each attempt has its record, failures too: the image as named, none measured
    answer = requests.get(f"{tower.runtime.config.api.url}/api/v1/jobs/{job.id}/attempts/2"
                          "/provenance", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["provenance"]["container"] == {
        "runtime": "bubblewrap", "image": "no-such-image", "path": None, "digest": None}


def test_a_containerised_job_goes_only_to_a_site_offering_its_runtime(
        live_tower: Callable[..., LiveTower], images: Path, tmp_path: Path) -> None:
    bare = {"pilot": {**site(images)["pilot"], "containers": {}}}
    tower = live_tower(site=site(images), more_sites={"bare": bare})
    tower.submit(contained(tmp_path, "boxed", jobs=4))
    tower.drive(tower.all_ended, timeout=180)
    with Session(tower.runtime.engine) as session:
        assert {attempt.site for attempt in session.exec(select(Attempt)).all()} == {"local"}


@pytest.mark.slurm
def test_a_production_runs_in_a_bubblewrap_image_on_slurm(
        slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch,
        live_tower: Callable[..., LiveTower], images: Path, tmp_path: Path) -> None:
    # set before the tower starts, undone after it stops (its pilots are scancelled)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    tower = live_tower(site=site(images, batch="slurm", batch_options={"partition": "debug"},
                                 pilot_command=[sys.executable, "-m", "pilots.main"]))
    tower.submit(contained(tmp_path, "boxed", jobs=4))
    tower.drive(tower.all_ended, timeout=300)
    assert_done_exactly_once(tower.runtime.engine, jobs=4)
    with Session(tower.runtime.engine) as session:
        records = [row.record for row in session.exec(select(Provenance)).all()]
    assert {record["container"]["digest"] for record in records} == \
        {records[0]["container"]["digest"]}
    assert all(record["argv"][0] == "bwrap" for record in records)
    with Session(tower.runtime.engine) as session:
        lfn = session.exec(select(CatalogFile.lfn)).first()
    assert lfn is not None
    again = rerun.rerun_at(tower.runtime, lfn, "local")  # a SLURM job of `pilot --rerun`
    assert again.verdict == rerun.IDENTICAL, again


def test_sites_check_finds_each_runtime_program_and_the_images_root(
        make_runtime: Callable[..., Any], images: Path) -> None:
    from tower.loops.factory import pilot_command
    from tower.loops.site_check import check_site

    offered = site(images)
    offered["pilot"]["containers"]["runtimes"] = ["bubblewrap", "apptainer"]
    runtime = make_runtime(site=offered)
    local = runtime.config.sites["local"]
    checks = {check.name: check for check in check_site(
        local, runtime.batch_system("local"), runtime.runner("local"), pilot_command(local))}
    assert checks["runtime bubblewrap"].passed and checks["images root"].passed
    assert not checks["runtime apptainer"].passed  # not installed on these machines
