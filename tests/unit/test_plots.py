from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from web.plots import Series, buckets, lines, stacked_bars

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 3, 1, 14, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)


def chart(*series: Series, count: int | None = None, step: timedelta = FIVE,
          title: str = "Failures") -> ET.Element:
    count = len(series[0].values) if series else (count or 0)
    starts = [T0 + i * step for i in range(count)]
    return ET.fromstring(str(stacked_bars(title, starts, step, series)))


def bars(root: ET.Element) -> list[ET.Element]:
    return [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]


def height(rect: ET.Element) -> float:
    return float(rect.get("height", "nan"))


def texts(root: ET.Element) -> list[str]:
    return [text.text or "" for text in root.iter(f"{SVG}text")]


def test_bar_heights_are_proportional_to_values() -> None:
    ten, five = bars(chart(Series("done", (10, 5), "#2e7d32")))

    assert height(five) > 0
    assert height(ten) == pytest.approx(2 * height(five), abs=0.2)


def test_series_stack_in_order_and_a_column_is_as_tall_as_its_sum() -> None:
    root = chart(Series("exit_code", (3, 0), "#c62828"), Series("walltime", (5, 0), "#ef6c00"),
                 Series("reference", (0, 8), "#888888"))

    exit_code, walltime, reference = bars(root)
    assert [r.get("data-series") for r in (exit_code, walltime)] == ["exit_code", "walltime"]
    # The first series sits at the bottom and the next starts where it ends.
    assert float(exit_code.get("y", "0")) > float(walltime.get("y", "0"))
    assert float(walltime.get("y", "0")) + height(walltime) == pytest.approx(
        float(exit_code.get("y", "0")), abs=0.01)
    assert height(exit_code) + height(walltime) == pytest.approx(height(reference), abs=0.01)


def test_each_bucket_is_one_group() -> None:
    root = chart(Series("done", (1, 2, 3), "#2e7d32"))

    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bucket"]
    assert [g.get("data-start") for g in groups] == [
        "2024-03-01T14:00Z", "2024-03-01T14:05Z", "2024-03-01T14:10Z"]
    assert all(len(bars(g)) == 1 for g in groups)


def test_zero_values_draw_no_rect() -> None:
    root = chart(Series("exit_code", (0, 4), "#c62828"), Series("walltime", (2, 0), "#ef6c00"))

    assert [(r.get("data-series"), r.get("data-value")) for r in bars(root)] == [
        ("walltime", "2"), ("exit_code", "4")]


def test_data_values_and_tooltips_match_the_input() -> None:
    root = chart(Series("exit_code", (12, 2.5, 0.1 + 0.2), "#c62828"))

    assert [r.get("data-value") for r in bars(root)] == ["12", "2.5", "0.3"]
    tooltip = bars(root)[1].find(f"{SVG}title")
    assert tooltip is not None
    assert tooltip.text == "exit_code: 2.5 jobs, 14:05–14:10 UTC"


def test_numbers_are_compact() -> None:
    svg = str(stacked_bars("t", [T0], FIVE, [Series("a", (0.1 + 0.2,), "#000")]))

    assert "0.30000000000000004" not in svg
    assert "0.3" in svg


def test_description_gives_the_totals_and_labels_the_chart() -> None:
    root = chart(Series("exit_code", (12, 3), "#c62828"), Series("walltime", (0, 4), "#ef6c00"))

    title_id, desc_id = root.get("aria-labelledby", "").split()
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title[@id='{title_id}']") is not None
    desc = root.find(f"{SVG}desc[@id='{desc_id}']")
    assert desc is not None and desc.text is not None
    assert "exit_code 15 jobs" in desc.text
    assert "walltime 4 jobs" in desc.text
    assert "2024-03-01 14:00 to 2024-03-01 14:10 UTC" in desc.text


def test_legend_shows_each_series_with_its_colour_and_total() -> None:
    root = chart(Series("exit_code", (12, 3), "#c62828"), Series("walltime", (0, 0), "#ef6c00"))

    entries = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend-entry"]
    swatches = [g.find(f"{SVG}rect") for g in entries]
    assert [s.get("fill") for s in swatches if s is not None] == ["#c62828", "#ef6c00"]
    assert [g.findtext(f"{SVG}text") for g in entries] == ["exit_code: 15", "walltime: 0"]


@pytest.mark.parametrize(("peak", "ticks"), [
    (37, ["0", "10", "20", "30", "40"]),
    (4, ["0", "1", "2", "3", "4"]),
    (1, ["0", "1", "2"]),
    (120, ["0", "50", "100", "150"]),
    (0.3, ["0", "0.1", "0.2", "0.3"]),
])
def test_y_axis_has_three_to_five_nice_ticks_from_zero(peak: float, ticks: list[str]) -> None:
    root = chart(Series("done", (peak,), "#2e7d32"))

    axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "y-axis")
    assert [t.text for t in axis.iter(f"{SVG}text")] == ticks


@pytest.mark.parametrize(("count", "step", "labels"), [
    # One hour (the chart starts at 14:00 UTC): times only, every other bucket.
    (12, FIVE, ["14:00", "14:10", "14:20", "14:30", "14:40", "14:50"]),
    # Five hours of 5-minute buckets: on the hour, not every seventh bucket.
    (60, FIVE, ["14:00", "15:00", "16:00", "17:00", "18:00"]),
    # Three days: date and time, on round hours.
    (36, timedelta(hours=2),
     ["03-02 00:00", "03-02 12:00", "03-03 00:00", "03-03 12:00", "03-04 00:00"]),
    # A month of days: dates, a week apart (weeks counted from the epoch, a Thursday).
    (30, timedelta(days=1), ["03-07", "03-14", "03-21", "03-28"]),
])
def test_x_labels_are_round_utc_times_that_do_not_crowd(count: int, step: timedelta,
                                                        labels: list[str]) -> None:
    root = chart(Series("done", (1,) * count, "#2e7d32"), step=step)

    axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "x-axis")
    assert [t.text for t in axis.iter(f"{SVG}text")] == labels
    positions = [float(t.get("x", "0")) for t in axis.iter(f"{SVG}text")]
    assert all(b - a >= 80 for a, b in zip(positions, positions[1:], strict=False))


@pytest.mark.parametrize("series", [(), (Series("exit_code", (0, 0, 0), "#c62828"),)])
def test_empty_chart_says_so_and_keeps_its_axes(series: tuple[Series, ...]) -> None:
    root = chart(*series, count=3)

    assert "no activity in this period" in texts(root)
    assert bars(root) == []
    assert {g.get("class") for g in root.iter(f"{SVG}g")} >= {"x-axis", "y-axis"}
    desc = root.findtext(f"{SVG}desc")
    assert desc is not None and "No activity in this period" in desc


def test_chart_with_no_buckets_is_still_an_svg() -> None:
    root = chart(count=0)

    assert root.tag == f"{SVG}svg"
    assert "no activity in this period" in texts(root)


def test_names_and_titles_are_escaped() -> None:
    name, title = '<script>&"', "Fails <b>&amp;</b>"
    svg = str(stacked_bars(title, [T0], FIVE, [Series(name, (2,), '"red')], unit="<u>"))

    assert "<script>" not in svg and "<b>" not in svg
    root = ET.fromstring(svg)  # raises if anything broke the XML
    assert root.findtext(f"{SVG}title") == title
    assert bars(root)[0].get("data-series") == name
    assert bars(root)[0].get("fill") == '"red'
    assert f"{name}: 2" in texts(root)
    assert bars(root)[0].findtext(f"{SVG}title") == f"{name}: 2 <u>, 14:00–14:05 UTC"


def test_output_is_deterministic_and_ids_differ_between_charts() -> None:
    def render(value: float) -> str:
        return str(stacked_bars("t", [T0, T0 + FIVE], FIVE, [Series("a", (value, 1), "#000")]))

    assert render(3) == render(3)
    assert ET.fromstring(render(3)).get("aria-labelledby") != ET.fromstring(
        render(4)).get("aria-labelledby")


def test_no_script_and_no_external_resources() -> None:
    svg = str(stacked_bars("t", [T0], FIVE, [Series("a", (1,), "#000")]))

    assert "<script" not in svg and "href" not in svg and "onload" not in svg


@pytest.mark.parametrize(("bad", "message"), [
    ([Series("a", (1, 2), "#000")], "2 values for 1 buckets"),
    ([Series("a", (-1,), "#000")], "negative"),
    ([Series("a", (float("nan"),), "#000")], "non-finite"),
])
def test_bad_series_are_refused(bad: list[Series], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stacked_bars("t", [T0], FIVE, bad)


def test_unevenly_spaced_starts_are_refused() -> None:
    with pytest.raises(ValueError, match="apart"):
        stacked_bars("t", [T0, T0 + 2 * FIVE], FIVE, [Series("a", (1, 1), "#000")])


@pytest.mark.parametrize(("span", "step"), [
    (timedelta(hours=1), timedelta(minutes=5)),
    (timedelta(hours=6), timedelta(minutes=10)),
    (timedelta(days=3), timedelta(hours=2)),
    (timedelta(days=30), timedelta(hours=12)),
])
def test_buckets_picks_the_smallest_step_that_fits(span: timedelta, step: timedelta) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)

    starts, chosen, _ = buckets({}, start, start + span)

    assert chosen == step
    assert len(starts) == span / step <= 60


def test_bucket_starts_are_aligned_to_the_step_since_the_epoch() -> None:
    start = datetime(2024, 3, 1, 13, 20, tzinfo=UTC)

    starts, step, _ = buckets({}, start, start + timedelta(days=3))

    assert step == timedelta(hours=2)
    assert starts[0] == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert starts[-1] < start + timedelta(days=3) <= starts[-1] + step
    assert all((s - datetime(1970, 1, 1, tzinfo=UTC)) % step == timedelta(0) for s in starts)
    assert len(starts) <= 60


def test_an_unaligned_window_may_need_a_larger_step() -> None:
    start = datetime(2024, 3, 1, 14, 7, tzinfo=UTC)

    starts, step, _ = buckets({}, start, start + timedelta(hours=5))

    # 5 minutes would need 61 bars, one more than allowed, because of the partial first one.
    assert step == timedelta(minutes=10)
    assert starts[0] == datetime(2024, 3, 1, 14, 0, tzinfo=UTC)


def test_buckets_sum_points_into_the_right_bucket() -> None:
    at = T0.replace  # five-minute rows, as the tower keeps them
    points = {
        at(minute=0): {"exit_code": 1, "walltime": 2},
        at(minute=5): {"exit_code": 3},
        at(minute=10): {"exit_code": 4},
        at(minute=55): {"lost_heartbeat": 1},
    }

    starts, step, values = buckets(points, T0, T0 + timedelta(hours=6))

    assert step == timedelta(minutes=10)
    assert values["exit_code"][:2] == [4, 4]
    assert values["walltime"][:2] == [2, 0]
    assert values["lost_heartbeat"][5] == 1
    assert sum(values["lost_heartbeat"]) == 1
    assert list(values) == ["exit_code", "lost_heartbeat", "walltime"]
    assert all(len(v) == len(starts) for v in values.values())


def test_buckets_ignore_points_outside_the_range() -> None:
    end = T0 + timedelta(hours=1)
    points = {
        T0 - FIVE: {"done": 100},
        T0: {"done": 1},
        end - FIVE: {"done": 2},
        end: {"done": 1000},
        T0.replace(minute=7) - timedelta(minutes=10): {"elsewhere": 5},
    }

    _, _, values = buckets(points, T0, end)

    assert values == {"done": [1] + [0] * 10 + [2]}


def test_naive_datetimes_are_utc() -> None:
    naive = datetime(2024, 3, 1, 14, 0)

    starts, _, values = buckets({naive: {"done": 1}}, naive, naive + timedelta(hours=1))

    assert starts[0] == T0
    assert values["done"][0] == 1


def test_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match="empty time range"):
        buckets({}, T0, T0)


def test_a_line_chart_draws_one_line_per_series_through_each_point() -> None:
    xs = [1000.0, 5000.0, 20000.0]
    chart = lines("requests", xs, [Series("requests/s", (100.0, 300.0, 250.0), "#111111"),
                                   Series("jobs/s", (50.0, 80.0, 0.0), "#222222")],
                  x_unit="pilots", unit="per second")
    svg = ET.fromstring(str(chart))
    ns = {"s": "http://www.w3.org/2000/svg"}
    polylines = svg.findall(".//s:polyline", ns)
    assert [p.get("data-series") for p in polylines] == ["requests/s", "jobs/s"]
    points = [[tuple(map(float, pair.split(","))) for pair in p.get("points", "").split()]
              for p in polylines]
    assert [len(line) for line in points] == [3, 3]
    # x rises with the pilots; a higher value is drawn higher (SVG's y grows downwards)
    assert points[0][0][0] < points[0][1][0] < points[0][2][0]
    assert points[0][1][1] < points[0][2][1] < points[0][0][1]
    assert points[1][2][1] == max(y for line in points for _, y in line)  # 0 on the axis
    assert "5000 pilots: 300" in (svg.find("s:desc", ns).text or "")


@pytest.mark.parametrize(("xs", "values", "message"), [
    ([2.0, 1.0], (1.0, 2.0), "must rise"),
    ([1.0, 2.0], (1.0,), "expected 2 finite values"),
    ([1.0, 2.0], (1.0, float("nan")), "expected 2 finite values"),
])
def test_bad_lines_are_refused(xs: list[float], values: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lines("t", xs, [Series("s", values, "#000")], x_unit="x", unit="y")
