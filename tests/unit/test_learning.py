"""Learning from successful attempts: the distributions of what they used (known figures),
a job's need when its production was tuned, and `tune` in a request, each bad value
refused naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from sites.config import Needs, SiteConfig
from tests.unit.test_specs import BASE, resolve
from tower.errors import SpecError
from tower.loops.tune import pilot_bounds
from tower.management.specs import TUNE_FACTOR, TUNE_MIN_SAMPLE, ProductionSpec
from tower.model.usage import Used, describe, percentile


def test_percentiles_are_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 21)]
    assert percentile(ordered, 0.95) == 19.0  # 19 of 20 values at or below it
    assert percentile(ordered, 0.5) == 10.0
    assert percentile([7.0], 0.95) == 7.0


def test_distributions_of_known_figures() -> None:
    # ten attempts of ten events on two cores: 100..190 MB, 1..10 s of CPU, 2..20 s of wall
    rows = [Used(job_id=n, events=10, cores=2, max_rss_mb=100 + 10 * n, cpu_seconds=n + 1,
                 wall_seconds=2 * (n + 1)) for n in range(10)]
    # one more measured by an older pilot: wall time only
    rows.append(Used(job_id=10, events=10, cores=2, max_rss_mb=None, cpu_seconds=None,
                     wall_seconds=40))
    figures = describe(rows)
    assert figures is not None and figures["attempts"] == 11
    assert figures["memory_mb"] == {"median": 145.0, "p95": 190.0, "max": 190.0}
    assert figures["cpu_seconds"] == {"median": 5.5, "p95": 10.0, "max": 10.0}
    assert figures["wall_seconds"] == {"median": 12.0, "p95": 40.0, "max": 40.0}
    assert figures["cpu_seconds_per_event"] == {"median": 0.55, "p95": 1.0, "max": 1.0}
    assert figures["wall_seconds_per_event"] == {"median": 1.2, "p95": 4.0, "max": 4.0}
    assert figures["efficiency"] == {"median": 0.25, "p95": 0.25, "max": 0.25}
    assert figures["overall_efficiency"] == 0.25
    assert describe([]) is None


def test_a_job_needs_the_larger_of_its_own_and_its_productions() -> None:
    def memory(own: int | None, production: int | None) -> int | None:
        return Needs(cores=1, memory=production, walltime=60).grown(own, None).memory

    assert memory(None, 2000) == 2000
    assert memory(3000, 2000) == 3000  # grown by a retry beyond the tuned value
    assert memory(1500, 2000) == 2000  # grown by a retry, then the production tuned up
    assert memory(1500, None) == 1500
    assert memory(None, None) is None
    assert Needs(cores=1, memory=None, walltime=600).grown(None, 300).walltime == 600


@pytest.mark.parametrize(("tune", "expected"), [
    ("auto", ("auto", TUNE_FACTOR, TUNE_MIN_SAMPLE)),
    (False, ("off", TUNE_FACTOR, TUNE_MIN_SAMPLE)),  # YAML's bare `off`
    ({"mode": "auto", "factor": 2, "min_sample": 50}, ("auto", 2.0, 50)),
    ({"factor": 1.2}, ("auto", 1.2, TUNE_MIN_SAMPLE)),
])
def test_tune_is_read(tune: Any, expected: tuple[str, float, int]) -> None:
    [item] = resolve({**BASE, "tune": tune})
    assert item.spec.tune is not None
    assert (item.spec.tune.mode, item.spec.tune.factor, item.spec.tune.min_sample) == expected


@pytest.mark.parametrize(("tune", "field", "words"), [
    ({"factor": -1.5}, "tune.factor", "greater than or equal to 1"),
    ({"factor": 0.5}, "tune.factor", "greater than or equal to 1"),
    ({"factor": 1e300}, "tune.factor", "less than or equal to 10"),
    ({"factor": "1.5"}, "tune.factor", "valid number"),
    ({"factor": True}, "tune.factor", "valid number"),
    ({"factor": "１.５"}, "tune.factor", "valid number"),
    ({"min_sample": -3}, "tune.min_sample", "greater than or equal to 5"),
    ({"min_sample": 10**12}, "tune.min_sample", "less than or equal to 1000"),
    ({"min_sample": 2.5}, "tune.min_sample", "valid integer"),
    ({"mode": "sometimes"}, "tune.mode", "'off' or 'auto'"),
    ("аuto", "tune.mode", "'off' or 'auto'"),  # a Cyrillic а
    ("autö", "tune.mode", "'off' or 'auto'"),
    ({"mode": "auto", "speed": 3}, "tune.speed", "unknown key"),
    (7, "tune", "expected auto, off, or a mapping"),
    (True, "tune", "expected auto, off, or a mapping"),
    (["auto"], "tune", "expected auto, off, or a mapping"),
])
def test_a_bad_tune_names_its_field(tune: Any, field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        resolve({**BASE, "tune": tune})
    assert caught.value.field == field
    assert words in str(caught.value) and "prod.yaml" in str(caught.value)


def _site(name: str, cores: int, memory: int | None, walltime: str) -> SiteConfig:
    return SiteConfig(name=name, scratch="/s", storage="/d",
                      pilot={"cores": cores, "memory": memory, "walltime": walltime,
                             "drain_margin": 0})


def test_tuning_is_bounded_by_one_pilot_that_holds_the_cores() -> None:
    sites = {"tier2": _site("tier2", 8, 4000, "1h"), "bigmem": _site("bigmem", 1, 16000, "1d"),
             "hpc": _site("hpc", 8, 12000, "30m")}
    eight = ProductionSpec.model_validate({**BASE, "cores": 8, "sites": []})
    one = ProductionSpec.model_validate({**BASE, "sites": []})
    # 8 cores and 10 GB: only hpc holds both, so its walltime bounds too
    assert pilot_bounds(eight, sites, 10000) == (12000, 1800)
    # more than any 8-core pilot has: the one with the most memory
    assert pilot_bounds(eight, sites, 20000) == (12000, 1800)
    # a small job: both 8-core pilots hold it; the longer walltime
    assert pilot_bounds(eight, sites, 1000) == (4000, 3600)
    assert pilot_bounds(one, sites, 10000) == (16000, 86400)
    # a pilot that declares no memory takes any
    assert pilot_bounds(one, {"open": _site("open", 1, None, "2h")}, 10**6) == (None, 7200)
    assert pilot_bounds(one, {}, 1000) == (None, None)
