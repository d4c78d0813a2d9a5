"""Distributions' bins: round edges covering every value, at most MAX_BINS of them, each
value counted once; and their histogram drawn with one bar per non-empty bin."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from web.plots import histogram
from web.summary import MAX_BINS, bins

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("values", [[0.3, 0.31, 0.9], [12.0] * 5, list(range(1000)),
                                    [1e-4, 2e-4], [5e6, 7.5e6, 1e7]])
def test_edges_are_round_and_cover_every_value(values: list[float]) -> None:
    edges, counts = bins(values)
    assert 1 <= len(counts) <= MAX_BINS and len(edges) == len(counts) + 1
    assert edges[0] <= min(values) and edges[-1] >= max(values)
    assert sum(counts) == len(values)
    widths = {round(b - a, 12) for a, b in zip(edges, edges[1:], strict=False)}
    assert len({f"{w:.6g}" for w in widths}) == 1
    assert f"{widths.pop():.0e}"[0] in "125"  # 1, 2 or 5 x 10^n


def test_a_low_bound_starts_the_bins_there() -> None:
    edges, counts = bins([0.5, 0.6], low=0.0)
    assert edges[0] == 0.0 and sum(counts) == 2


def test_no_values_no_bins() -> None:
    assert bins([]) == ([], [])


def test_the_histogram_draws_a_bar_per_non_empty_bin_with_its_axes() -> None:
    root = ET.fromstring(str(histogram("Wall time", [0, 10, 20, 30], [2, 0, 5],
                                       quantity="wall time", x_unit="s")))
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    assert [bar.get("data-value") for bar in bars] == ["2", "5"]
    texts = [text.text or "" for text in root.iter(f"{SVG}text")]
    assert "y: jobs per bin · x: wall time (s)" in texts
    assert {"0", "10", "20", "30"} <= set(texts)
    empty = ET.fromstring(str(histogram("Nothing", [], [], quantity="q", x_unit="s")))
    assert any("no activity" in (text.text or "") for text in empty.iter(f"{SVG}text"))
    with pytest.raises(ValueError, match="edges"):
        histogram("Bad", [0, 1], [1, 2], quantity="q", x_unit="s")
