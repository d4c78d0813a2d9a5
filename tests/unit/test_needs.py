"""A job's needs against pilot shapes (issue 20 item 2): the one fit test, the message that
names the need and the largest pilot on offer, and bad cores and memory named by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sites.config import Needs, PilotShape, load_sites
from sites.errors import ConfigError
from sites.schema import build
from tower.errors import SpecError
from tower.management.specs import ProductionSpec, no_fit

SMALL = PilotShape(cores=2, memory=2000, walltime=600, drain_margin=5)
BIG = PilotShape(cores=8, memory=16000, walltime=600, drain_margin=5)
FAT = PilotShape(cores=1, memory=32000, walltime=7200, drain_margin=0)


@pytest.mark.parametrize(("needs", "misfit"), [
    (Needs(cores=2, memory=2000, walltime=595), None),       # exactly what it gives
    (Needs(cores=3, memory=None, walltime=60), "cores"),
    (Needs(cores=1, memory=2001, walltime=60), "memory"),
    (Needs(cores=1, memory=None, walltime=596), "walltime"),  # the drain margin is kept
    (Needs(cores=4, memory=4000, walltime=999), "cores"),     # the first, in NEEDS order
])
def test_misfit_names_the_first_need_a_pilot_cannot_hold(needs: Needs,
                                                          misfit: str | None) -> None:
    assert SMALL.misfit(needs) == misfit


def test_a_pilot_whose_memory_is_not_declared_holds_any_memory() -> None:
    assert PilotShape(cores=2).misfit(Needs(cores=2, memory=10**6, walltime=60)) is None


def test_grown_needs_take_the_jobs_own_memory_and_walltime() -> None:
    needs = Needs(cores=2, memory=1000, walltime=300)
    assert needs.grown(None, None) == needs
    assert needs.grown(1500, 900) == Needs(cores=2, memory=1500, walltime=900)


def test_no_fit_names_the_need_and_the_largest_pilot_on_offer() -> None:
    shapes = {"local/default": SMALL, "big/default": BIG}
    assert no_fit(Needs(cores=1, memory=64000, walltime=60), shapes) == (
        "memory", "memory: 64000 MB fits no site; the largest pilots offer 16000 MB "
                  "(big/default)")
    assert no_fit(Needs(cores=16, memory=None, walltime=60), shapes) == (
        "cores", "cores: 16 cores fits no site; the largest pilots offer 8 cores (big/default)")
    field, why = no_fit(Needs(cores=1, memory=None, walltime=3600), shapes) or ("", "")
    assert field == "walltime" and "at most 595s (local/default" in why
    assert no_fit(Needs(cores=8, memory=16000, walltime=595), shapes) is None
    # nothing on offer: nothing to compare with (another check names the missing site)
    assert no_fit(Needs(cores=99, memory=None, walltime=60), {}) is None


def test_needs_that_each_fit_somewhere_but_nowhere_together_are_told_with_every_shape() -> None:
    shapes = {"local/default": SMALL, "fat/default": FAT}
    field, why = no_fit(Needs(cores=2, memory=4000, walltime=60), shapes) or ("", "")
    assert field == "memory"  # what the first site lacks
    assert why.startswith("memory: 2 cores, 4000 MB, 60s together fit no site's pilots")
    assert "local/default offers 2 cores, 2000 MB, 595s a job" in why
    assert "fat/default offers 1 core, 32000 MB, 7200s a job" in why


def test_an_undeclared_memory_anywhere_refuses_no_memory() -> None:
    shapes = {"local/default": SMALL, "open/default": PilotShape(cores=1)}
    assert no_fit(Needs(cores=1, memory=64000, walltime=60), shapes) is None


BAD_COUNTS: list[tuple[Any, str]] = [
    (0, "greater than or equal to 1"),
    (-4, "greater than or equal to 1"),
    (10**6, "less than or equal to 100000"),
    (True, "expected a whole number of cores, got True"),
    ("many", "valid integer"),
    (1.5, "valid integer"),
]
BAD_MEMORY: list[tuple[Any, str]] = [
    (0, "greater than 0"),
    (-4, "greater than 0"),
    ("-3GB", "expected a memory size"),
    ("1e400", "expected a memory size"),
    (10**12, "less than or equal to"),
    ("lots", "expected a memory size"),
    (True, "expected a memory size"),
]


def _site(tmp_path: Path, pilot: dict[str, Any]) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump({"sites": {"nersc": {
        "scratch": "/scratch", "storage": "/storage", "pilot": pilot}}}))
    return path


@pytest.mark.parametrize(("value", "problem"), BAD_COUNTS)
def test_bad_pilot_cores_are_named_in_sites_yaml(tmp_path: Path, value: Any,
                                                 problem: str) -> None:
    path = _site(tmp_path, {"cores": value})
    with pytest.raises(ConfigError) as caught:
        load_sites(path)
    assert caught.value.field == "sites.nersc.pilot.cores"
    assert str(caught.value).startswith(f"{path}: sites.nersc.pilot.cores: ")
    assert problem in str(caught.value)


@pytest.mark.parametrize(("value", "problem"), BAD_MEMORY)
def test_bad_pilot_memory_is_named_in_sites_yaml(tmp_path: Path, value: Any,
                                                 problem: str) -> None:
    path = _site(tmp_path, {"memory": value})
    with pytest.raises(ConfigError) as caught:
        load_sites(path)
    assert caught.value.field == "sites.nersc.pilot.memory"
    assert problem in str(caught.value)


REQUEST = {"name": "p", "software": "s 1", "command": ["true"], "events_total": 10,
           "events_per_job": 1, "walltime": "2m"}


@pytest.mark.parametrize(("field", "value", "problem"),
                         [("cores", value, problem) for value, problem in BAD_COUNTS]
                         + [("memory", value, problem) for value, problem in BAD_MEMORY])
def test_bad_job_cores_and_memory_are_named_in_a_request(field: str, value: Any,
                                                         problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        build(ProductionSpec, {**REQUEST, field: value}, "p.yaml", error=SpecError)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"p.yaml: {field}: ") and problem in str(caught.value)


def test_shortfall_tells_what_a_pilot_lacks() -> None:
    assert SMALL.shortfall(Needs(cores=2, memory=2000, walltime=595)) is None
    assert SMALL.shortfall(Needs(cores=2, memory=2500, walltime=60)) == (
        "memory: it needs 2500 MB, a pilot gives a job at most 2000 MB")
    assert SMALL.shortfall(Needs(cores=1, memory=None, walltime=900)) == (
        "walltime: it needs 900s, a pilot gives a job at most 595s (pilot walltime minus "
        "drain margin)")
