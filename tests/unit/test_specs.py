"""Production requests: validation of each bad input, inheritance, splitting, seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tower.errors import SpecError
from tower.management.specs import (
    ProductionSpec,
    Resolved,
    load_requests,
    preview,
    resolve_all,
    seed_for,
    split,
)

SITES = {"local": object(), "nersc": object()}
DESTINATIONS = {"store": object()}

BASE: dict[str, Any] = {
    "name": "sim", "software": "toysim 1.0",
    "command": ["${python}", "sim.py", "--seed", "${seed}"],
    "steering": {"run.mac": "/run/beamOn ${events}\n/random/seed ${seed}\n"},
    "events_total": 1050, "events_per_job": 100, "walltime": "1h",
    "outputs": ["*.root"], "sites": ["local"],
}


def resolve(*documents: dict[str, Any], lookup: Any = lambda name: None) -> list[Resolved]:
    return resolve_all([dict(d) for d in documents], "prod.yaml", lookup, SITES, DESTINATIONS,
                       {"standard"})


def test_a_valid_request_resolves() -> None:
    [item] = resolve(BASE)
    assert item.spec.walltime == 3600
    assert item.spec.job_count == 11


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"colour": "red"}, "colour", "unknown key"),
    ({"events_total": "many"}, "events_total", "valid integer"),
    ({"events_total": 0}, "events_total", "greater than 0"),
    ({"events_per_job": -5}, "events_per_job", "greater than 0"),
    ({"events_per_job": 5000}, "events_per_job", "larger than events_total"),
    ({"sites": ["atlantis"]}, "sites", "unknown site 'atlantis'"),
    ({"destinations": ["moon"]}, "destinations", "unknown destination 'moon'"),
    ({"command": ["sim", "${nope}"]}, "command[1]", "${nope} is not defined"),
    ({"steering": {"run.mac": "${colour}"}}, "steering.run.mac", "${colour} is not defined"),
    ({"steering": {"run.mac": "cost $5"}}, "steering.run.mac", "malformed placeholder"),
    ({"steering": {"../escape": "x"}}, "steering", "plain file name"),
    ({"parameters": {"seed": 3}}, "parameters", "built-in variable"),
    ({"parameters": {"not-a-name": 3}}, "parameters", "not a valid variable name"),
    ({"walltime": "forever"}, "walltime", "duration"),
    ({"name": "has space"}, "name", "pattern"),
])
def test_each_bad_input_names_its_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        resolve({**BASE, **change})
    assert caught.value.field == field
    assert words in str(caught.value)
    assert "prod.yaml" in str(caught.value)


def test_a_missing_required_field_is_named() -> None:
    document = {key: value for key, value in BASE.items() if key != "software"}
    with pytest.raises(SpecError, match="software: required key is missing"):
        resolve(document)


def test_a_parent_cycle_is_refused() -> None:
    a = {**BASE, "name": "a", "parent": "b"}
    b = {"name": "b", "parent": "c", "abstract": True}
    c = {"name": "c", "parent": "a", "abstract": True}
    with pytest.raises(SpecError, match="parent cycle: a -> b -> c -> a"):
        resolve(a, b, c)


def test_an_unknown_parent_is_refused() -> None:
    with pytest.raises(SpecError, match="no production named 'ghost'"):
        resolve({**BASE, "parent": "ghost"})


def test_inheritance_is_multi_level_and_remembers_origins() -> None:
    grand = {**BASE, "name": "grand", "abstract": True,
             "parameters": {"detector": "TPC", "source": "Rn222", "field": 100}}
    parent = {"name": "parent", "parent": "grand", "abstract": True,
              "parameters": {"source": "Kr85"}, "walltime": "2h"}
    child = {"name": "child", "parent": "parent", "parameters": {"field": 200},
             "events_total": 500}
    [item] = resolve(grand, parent, child)
    assert item.spec.parameters == {"detector": "TPC", "source": "Kr85", "field": 200}
    assert item.spec.walltime == 7200
    assert item.spec.events_total == 500
    assert item.spec.command == BASE["command"]
    assert item.origins["parameters.detector"] == "grand"
    assert item.origins["parameters.source"] == "parent"
    assert item.origins["parameters.field"] == "child"
    assert item.origins["walltime"] == "parent"
    assert item.origins["command"] == "grand"
    assert "abstract" not in item.spec.model_dump(exclude_defaults=True)


def test_a_parent_in_the_database_is_inherited() -> None:
    stored = ProductionSpec.model_validate({**BASE, "name": "old", "parameters": {"x": 1}})
    origins = {"parameters.x": "old", "command": "old"}

    def lookup(name: str) -> Any:
        return (stored.model_dump(mode="json"), origins) if name == "old" else None

    [item] = resolve({"name": "new", "parent": "old", "parameters": {"y": 2}}, lookup=lookup)
    assert item.spec.parameters == {"x": 1, "y": 2}
    assert item.spec.name == "new" and item.spec.parent == "old"
    assert item.origins["parameters.x"] == "old" and item.origins["parameters.y"] == "new"


def test_a_file_of_only_abstract_requests_submits_nothing() -> None:
    with pytest.raises(SpecError, match="abstract"):
        resolve({**BASE, "abstract": True})


def test_splitting_makes_the_last_job_smaller() -> None:
    spec = ProductionSpec.model_validate(BASE)
    jobs = list(split(spec))
    assert [job.events for job in jobs] == [100] * 10 + [50]
    assert [job.first_event for job in jobs] == list(range(0, 1001, 100))
    assert [job.index for job in jobs] == list(range(11))
    assert sum(job.events for job in jobs) == spec.events_total


def test_splitting_can_continue_where_it_stopped() -> None:
    spec = ProductionSpec.model_validate(BASE)
    later = list(split(spec, start_index=5, start_event=500))
    assert later == list(split(spec))[5:]


def test_seeds_are_reproducible_and_distinct() -> None:
    spec = ProductionSpec.model_validate(BASE)
    again = ProductionSpec.model_validate(BASE)
    other = ProductionSpec.model_validate({**BASE, "name": "sim2"})
    seeds = [seed_for(spec, index) for index in range(1000)]
    assert seeds == [seed_for(again, index) for index in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= seed < 2**31 for seed in seeds)
    assert seed_for(other, 0) != seed_for(spec, 0)


def test_given_seeds_count_up_from_the_base() -> None:
    spec = ProductionSpec.model_validate({**BASE, "seed_base": 1000})
    assert [job.seed for job in split(spec)][:3] == [1000, 1001, 1002]


def test_preview_renders_the_first_job() -> None:
    spec = ProductionSpec.model_validate(BASE)
    rendered = preview(spec)
    seed = seed_for(spec, 0)
    assert rendered["command"] == ["<python>", "sim.py", "--seed", str(seed)]
    assert rendered["steering"]["run.mac"] == f"/run/beamOn 100\n/random/seed {seed}\n"


def test_a_yaml_file_may_hold_several_requests(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**BASE, "name": "one"}) + "---\n"
                    + yaml.safe_dump({**BASE, "name": "two"}))
    documents = load_requests(path)
    assert [d["name"] for d in documents] == ["one", "two"]
    assert documents[0]["spec_dir"] == str(tmp_path)


def test_broken_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ncommand: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+: invalid YAML"):
        load_requests(path)
