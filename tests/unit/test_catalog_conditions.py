"""Catalog conditions: where each key looks, which comparisons it allows, clear refusals."""

from __future__ import annotations

import pytest

from catalog.queries import Condition, QueryError, parse_condition, parse_conditions


@pytest.mark.parametrize(("text", "expected"), [
    ("software=toysim 1.0", Condition("=", "toysim 1.0", path=("software",))),
    ("production=rn-2024", Condition("=", "rn-2024", path=("production",))),
    ("template_hash=abc123", Condition("=", "abc123", path=("template_hash",))),
    ("seed=17", Condition("=", "17", path=("seed",))),
    ("source=Rn222", Condition("=", "Rn222", path=("parameters", "source"))),
    ("parameters.source=Rn222", Condition("=", "Rn222", path=("parameters", "source"))),
    ("parameters.seed=3", Condition("=", "3", path=("parameters", "seed"))),
    ("geometry.detector=LZ", Condition("=", "LZ", path=("parameters", "geometry", "detector"))),
    ("dataset=lz/sim/rn222", Condition("=", "lz/sim/rn222", column="dataset")),
    ("size>1000", Condition(">", "1000", column="size")),
    ("events>=100", Condition(">=", "100", column="events")),
    ("attempt<=2", Condition("<=", "2", column="attempt")),
    ("job<50", Condition("<", "50", column="job")),
    ("note=a=b", Condition("=", "a=b", path=("parameters", "note"))),
])
def test_a_condition_names_where_it_looks(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize(("text", "complaint"), [
    ("software", "write KEY=VALUE"),
    ("=Rn222", "write KEY=VALUE"),
    ("so urce=Rn222", "write KEY=VALUE"),
    ("source=", "no value after '='"),
    ("size>big", "size is compared with a whole number, not 'big'"),
    ("events=1.5", "events is compared with a whole number"),
    ("software>3", "software is matched with ="),
    ("dataset>a", "dataset is matched with ="),
])
def test_a_malformed_condition_is_refused_by_name(text: str, complaint: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_condition(text)
    assert repr(text) in str(caught.value) and complaint in str(caught.value)
    assert caught.value.exit_code == 2 and caught.value.status == 400


def test_no_condition_at_all_is_refused() -> None:
    with pytest.raises(QueryError, match="at least one condition"):
        parse_conditions([])
