"""Server-rendered SVG charts for the status pages (and the benchmarks), readable without
JavaScript.

Two uses: jobs done per time bucket ("throughput over time") and failed attempts per
bucket stacked by outcome class ("failures over time"). `buckets()` turns the
fine-grained counts the tower keeps (typically one row per 5 minutes) into at most a
screenful of bars; `stacked_bars()` draws them as one inline `<svg>` whose `<desc>`
carries the totals, so a screen reader or a text browser still gets the numbers.
`histogram()` draws one quantity's distribution; `lines()` draws curves against a
number (the swarm benchmark's requests/s and latency against simulated pilots).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from markupsafe import Markup, escape

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ZERO = timedelta(0)
#: Bucket widths buckets() picks from, smallest first; the tower's counters are kept per
#: five minutes (FIVE_MINUTES), finer steps serve data read at exact times.
STEPS: tuple[timedelta, ...] = tuple(timedelta(seconds=s) for s in (10, 30, 60, 120)) + tuple(
    timedelta(minutes=m) for m in (5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080))
FIVE_MINUTES = timedelta(minutes=5)

# Layout, in pixels. Text is not measured (no font metrics server-side), so widths are
# estimated from an average glyph width that errs on the wide side.
FONT_SIZE = 11
CHAR_WIDTH = 6.5
TITLE_BASELINE = 15
PLOT_TOP = 26
MARGIN_RIGHT = 12
X_LABEL_HEIGHT = 18
LEGEND_ROW = 16
LABEL_SPACING = 80          # one x label per this many pixels at most
BAR_GAP = 0.2               # fraction of a bucket's width left between bars
MIN_PLOT_HEIGHT = 20
MAX_TICK_INTERVALS = 4      # so the y axis has 3-5 ticks counting 0
GRID_COLOR = "#dddddd"
AXIS_COLOR = "#888888"
TEXT_COLOR = "#333333"
EMPTY_TEXT = "no activity in this period"

# Characters XML 1.0 forbids even when escaped; names come from user configuration.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Series:
    """One stacked layer of a chart: a legend label, one value per bucket, a CSS colour."""

    name: str
    values: tuple[float, ...]
    color: str


@dataclass(frozen=True)
class _Box:
    """The plot area inside the margins; y grows downwards as in SVG."""

    left: float
    top: float
    right: float
    bottom: float

    def y(self, value: float, scale_top: float) -> float:
        return round(self.bottom - value / scale_top * (self.bottom - self.top), 1)


def buckets(points: Mapping[datetime, Mapping[str, float]], start: datetime, end: datetime,
            max_bars: int = 60, min_step: timedelta = FIVE_MINUTES
            ) -> tuple[list[datetime], timedelta, dict[str, list[float]]]:
    """Re-bucket fine-grained counts into at most `max_bars` equal buckets covering [start, end).

    Keys of `points` are bucket start times in UTC (naive datetimes are taken as UTC).
    The step is the smallest of STEPS not below `min_step` (the points' own granularity)
    that fits; bucket starts are multiples of the step
    since the epoch, so the first bucket may begin before `start` (points before `start`
    are still ignored). Beyond 60 weeks the step stays at 7 days and the bar count
    exceeds `max_bars`. Returns (bucket starts as aware UTC datetimes, step,
    {series name: values}) with names sorted; a name with no point in range is absent.
    Raises ValueError for an empty range or a `max_bars` below 1.
    """
    start, end = utc(start), utc(end)
    if end <= start:
        raise ValueError(f"empty time range: end {end} is not after start {start}")
    if max_bars < 1:
        raise ValueError(f"max_bars must be at least 1, not {max_bars}")
    step = _choose_step(start, end, max_bars, min_step)
    first = _align(start, step)
    count = _ceil_div(end - first, step)
    values: dict[str, list[float]] = {}
    for moment, counts in points.items():
        moment = utc(moment)
        if not start <= moment < end:
            continue
        index = (moment - first) // step
        for name, value in counts.items():
            values.setdefault(name, [0.0] * count)[index] += float(value)
    starts = [first + i * step for i in range(count)]
    return starts, step, {name: values[name] for name in sorted(values)}


def stacked_bars(title: str, starts: Sequence[datetime], step: timedelta,
                 series: Sequence[Series], *, unit: str = "jobs",
                 width: int = 720, height: int = 220, level: bool = False) -> Markup:
    """An inline `<svg>` of stacked bars, one column per bucket, first series at the bottom.

    `starts` are evenly spaced bucket starts `step` apart (as from buckets()), and each
    series has one finite, non-negative value per bucket; otherwise ValueError. Values are
    counts per bucket, or with `level` a level in each bucket (pilots running): the legend
    then gives each series' peak rather than its total.
    """
    _check(starts, step, series)
    starts = [utc(moment) for moment in starts]
    if level:
        series = [Series(f"{s.name} (peak)", s.values, s.color) for s in series]
    totals = [max(s.values, default=0.0) if level else math.fsum(s.values) for s in series]
    empty = not any(totals)
    peak = max((math.fsum(s.values[i] for s in series) for i in range(len(starts))), default=0)
    integral = all(float(v).is_integer() for s in series for v in s.values)
    # An empty chart gets three intervals so no gridline runs through the centred message.
    ticks = _y_ticks(peak if peak else 3, integral)
    left = max(len(_num(tick)) for tick in ticks) * CHAR_WIDTH + 12
    legend, rows = _legend_layout(series, totals, left, width - MARGIN_RIGHT)
    bottom = height - 8 - rows * LEGEND_ROW - X_LABEL_HEIGHT
    box = _Box(left, PLOT_TOP, width - MARGIN_RIGHT, max(bottom, PLOT_TOP + MIN_PLOT_HEIGHT))
    chart_id = _chart_id(title, starts, step, series, unit, width, height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc"'
        f' font-family="sans-serif" font-size="{FONT_SIZE}" fill="{TEXT_COLOR}">',
        f'<title id="{chart_id}-title">{_text(title)}</title>',
        f'<desc id="{chart_id}-desc">'
        f'{_text(_description(starts, step, series, totals, unit, empty))}</desc>',
        f'<text x="{_num(left)}" y="{TITLE_BASELINE}" font-size="13" font-weight="bold">'
        f'{_text(title)}</text>',
        _axis_units(f"y: {unit} {'in' if level else 'per'} {_duration_text(step)}"
                    " · x: time (UTC)", width),
        _y_axis(box, ticks),
        _x_axis(box, starts, step, width),
        _bars(box, starts, step, series, unit, ticks[-1]),
        _legend(legend, box.bottom + X_LABEL_HEIGHT + 14),
    ]
    if empty:
        parts.append(
            f'<text class="empty" x="{_num((box.left + box.right) / 2)}"'
            f' y="{_num((box.top + box.bottom) / 2)}" text-anchor="middle">{EMPTY_TEXT}</text>')
    parts.append("</svg>")
    return Markup("\n".join(part for part in parts if part))


def utc(moment: datetime) -> datetime:
    # The tower stores UTC; a naive datetime from SQLite is UTC, not local time.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _align(moment: datetime, step: timedelta) -> datetime:
    # Aligning to the epoch rather than to `start` keeps bars still as the window slides.
    return moment - (moment - EPOCH) % step


def _ceil_div(span: timedelta, step: timedelta) -> int:
    return -(-span // step)


def _choose_step(start: datetime, end: datetime, max_bars: int, min_step: timedelta
                 ) -> timedelta:
    for step in STEPS:
        if step >= min_step and _ceil_div(end - _align(start, step), step) <= max_bars:
            return step
    return STEPS[-1]


def _check(starts: Sequence[datetime], step: timedelta, series: Sequence[Series]) -> None:
    if step <= ZERO:
        raise ValueError(f"step must be positive, not {step}")
    for earlier, later in zip(starts, starts[1:], strict=False):
        if utc(later) - utc(earlier) != step:
            raise ValueError(f"bucket starts are not {step} apart: {earlier}, {later}")
    for s in series:
        if len(s.values) != len(starts):
            raise ValueError(
                f"series {s.name!r} has {len(s.values)} values for {len(starts)} buckets")
        if not all(math.isfinite(v) and v >= 0 for v in s.values):
            raise ValueError(f"series {s.name!r} has a negative or non-finite value")


def _y_ticks(peak: float, integral: bool) -> list[float]:
    """0 and 2-4 more ticks at a 1, 2 or 5 x 10^n step, the last at or above `peak`."""
    # Counts never get half-job ticks; fractional data may go down to 0.1.
    exponent = 0 if integral else -1
    while True:
        for multiple in (1, 2, 5):
            tick = multiple * 10.0**exponent
            intervals = math.ceil(peak / tick)
            if intervals <= MAX_TICK_INTERVALS:
                return [round(i * tick, 1) for i in range(max(intervals, 2) + 1)]
        exponent += 1


def _legend_layout(series: Sequence[Series], totals: Sequence[float], left: float,
                   right: float) -> tuple[list[tuple[float, int, Series, float]], int]:
    """Legend entries as (x, row, series, total), wrapping rows at `right`; and the row count."""
    entries: list[tuple[float, int, Series, float]] = []
    x, row = left, 0
    for s, total in zip(series, totals, strict=True):
        entry_width = 14 + len(_legend_label(s, total)) * CHAR_WIDTH + 16
        if x + entry_width > right and x > left:
            x, row = left, row + 1
        entries.append((x, row, s, total))
        x += entry_width
    return entries, (row + 1 if entries else 0)


def _legend_label(s: Series, total: float) -> str:
    return f"{s.name}: {_num(total)}"


def _legend(entries: Sequence[tuple[float, int, Series, float]], top: float) -> str:
    lines = ['<g class="legend">']
    for x, row, s, total in entries:
        y = top + row * LEGEND_ROW
        lines.append(
            f'<g class="legend-entry" data-series="{_text(s.name)}">'
            f'<rect x="{_num(x)}" y="{_num(y - 9)}" width="10" height="10"'
            f' fill="{_text(s.color)}"/>'
            f'<text x="{_num(x + 14)}" y="{_num(y)}">{_text(_legend_label(s, total))}</text></g>')
    lines.append("</g>")
    return "\n".join(lines)


def _y_axis(box: _Box, ticks: Sequence[float]) -> str:
    lines = ['<g class="y-axis">']
    for tick in ticks:
        y = _num(box.y(tick, ticks[-1]))
        lines.append(f'<line x1="{_num(box.left)}" x2="{_num(box.right)}" y1="{y}" y2="{y}"'
                     f' stroke="{GRID_COLOR}"/>')
        lines.append(f'<text x="{_num(box.left - 6)}" y="{y}" dy="4" text-anchor="end">'
                     f'{_num(tick)}</text>')
    lines.append(f'<line x1="{_num(box.left)}" x2="{_num(box.left)}" y1="{_num(box.top)}"'
                 f' y2="{_num(box.bottom)}" stroke="{AXIS_COLOR}"/>')
    lines.append("</g>")
    return "\n".join(lines)


def _x_axis(box: _Box, starts: Sequence[datetime], step: timedelta, width: int) -> str:
    lines = ['<g class="x-axis">',
             f'<line x1="{_num(box.left)}" x2="{_num(box.right)}" y1="{_num(box.bottom)}"'
             f' y2="{_num(box.bottom)}" stroke="{AXIS_COLOR}"/>']
    if starts:
        slot = (box.right - box.left) / len(starts)
        interval = _label_interval(step, slot)
        # Whole-day labels say only the date; the tooltips still give the times.
        time_format = "%m-%d" if interval % DAY == ZERO else _label_format(starts, step)
        phase = (starts[0] - EPOCH) % step
        for i, moment in enumerate(starts):
            # Labels sit on round times since the epoch (give or take the buckets' own
            # offset), so they stay put as the window slides; labels that would poke out
            # of the picture are dropped.
            label = moment.strftime(time_format)
            x = box.left + i * slot
            half = len(label) * CHAR_WIDTH / 2
            if (moment - EPOCH - phase) % interval or x - half < 0 or x + half > width:
                continue
            lines.append(f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(box.bottom)}"'
                         f' y2="{_num(box.bottom + 4)}" stroke="{AXIS_COLOR}"/>')
            lines.append(f'<text x="{_num(x)}" y="{_num(box.bottom + 15)}"'
                         f' text-anchor="middle">{label}</text>')
    lines.append("</g>")
    return "\n".join(lines)


def _bars(box: _Box, starts: Sequence[datetime], step: timedelta, series: Sequence[Series],
          unit: str, scale_top: float) -> str:
    lines = ['<g class="bars">']
    slot = (box.right - box.left) / max(len(starts), 1)
    bar_width = _num(slot * (1 - BAR_GAP))
    time_format = _label_format(starts, step)
    for i, moment in enumerate(starts):
        x = _num(box.left + i * slot + slot * BAR_GAP / 2)
        period = _period(moment, step, time_format)
        lines.append(f'<g class="bucket" data-start="{moment.strftime("%Y-%m-%dT%H:%MZ")}">')
        # Edges come from running sums, so stacked rects meet exactly and the column's
        # height is the total's, whatever the rounding of each layer.
        running, lower = 0.0, box.bottom
        for s in series:
            value = s.values[i]
            if value == 0:
                continue
            running += value
            upper = box.y(running, scale_top)
            lines.append(
                f'<rect class="bar" data-series="{_text(s.name)}" data-value="{_num(value)}"'
                f' x="{x}" y="{_num(upper)}" width="{bar_width}" height="{_num(lower - upper)}"'
                f' fill="{_text(s.color)}"><title>'
                f'{_text(f"{s.name}: {_num(value)} {unit}, {period} UTC")}</title></rect>')
            lower = upper
        lines.append("</g>")
    lines.append("</g>")
    return "\n".join(lines)


def _label_interval(step: timedelta, slot: float) -> timedelta:
    """Time between x labels: a round duration, a multiple of `step`, LABEL_SPACING apart."""
    wanted = step * math.ceil(LABEL_SPACING / slot)
    for interval in STEPS:
        if interval >= wanted and interval % step == ZERO:
            return interval
    return wanted


def _label_format(starts: Sequence[datetime], step: timedelta) -> str:
    if step < timedelta(minutes=1):
        return "%H:%M:%S"
    if step >= DAY:
        return "%m-%d"
    if len(starts) * step <= DAY:
        return "%H:%M"
    return "%m-%d %H:%M"


def _period(moment: datetime, step: timedelta, time_format: str) -> str:
    """A bucket as text: "14:05–14:10", or whole days inclusive: "03-01" or "03-01–03-07"."""
    if step >= DAY:
        last_day = moment + step - DAY
        if last_day == moment:
            return moment.strftime(time_format)
        return f"{moment.strftime(time_format)}–{last_day.strftime(time_format)}"
    return f"{moment.strftime(time_format)}–{(moment + step).strftime(time_format)}"


def _description(starts: Sequence[datetime], step: timedelta, series: Sequence[Series],
                 totals: Sequence[float], unit: str, empty: bool) -> str:
    """The chart in words, for screen readers and text browsers."""
    if not starts:
        return f"{EMPTY_TEXT.capitalize()}."
    full = "%Y-%m-%d %H:%M"
    text = (f"From {starts[0].strftime(full)} to {(starts[-1] + step).strftime(full)} UTC,"
            f" in buckets of {_duration_text(step)}.")
    if series:
        text += " Totals: " + ", ".join(
            f"{s.name} {_num(total)} {unit}" for s, total in zip(series, totals, strict=True))
        text += "."
    if empty:
        text += f" {EMPTY_TEXT.capitalize()}."
    return text


def _duration_text(step: timedelta) -> str:
    for size, name in ((DAY, "day"), (HOUR, "hour"), (timedelta(minutes=1), "minute")):
        if step % size == ZERO:
            count = step // size
            return f"{count} {name}" + ("s" if count != 1 else "")
    return f"{_num(step.total_seconds())} seconds"


def _chart_id(title: str, starts: Sequence[datetime], step: timedelta,
              series: Sequence[Series], unit: str, width: int, height: int) -> str:
    # Derived from the input, not a counter, so the output is deterministic while two
    # different charts on one page still get different ids.
    key = repr((title, [m.isoformat() for m in starts], step.total_seconds(),
                [(s.name, tuple(s.values), s.color) for s in series], unit, width, height))
    return "chart-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def _num(value: float) -> str:
    """A number with at most one decimal and no trailing ".0" (12, 0.3, 171.2)."""
    text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def _text(value: str) -> str:
    return str(escape(_NOT_XML.sub("", value)))


def histogram(title: str, edges: Sequence[float], counts: Sequence[float], *,
              quantity: str, x_unit: str, unit: str = "jobs", color: str = "#1e88e5",
              width: int = 720, height: int = 220) -> Markup:
    """An inline `<svg>` histogram: one bar per bin [edges[i], edges[i+1]) holding
    counts[i], x labelled in `x_unit`, y in `unit` (no edges and no counts: an empty one).
    Raises ValueError for edges that do not rise, or counts that are not one per bin,
    finite and non-negative."""
    if (edges or counts) and len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} counts need {len(counts) + 1} edges, not {len(edges)}")
    if any(later <= earlier for earlier, later in zip(edges, edges[1:], strict=False)):
        raise ValueError("histogram edges must rise")
    if not all(math.isfinite(c) and c >= 0 for c in counts):
        raise ValueError("histogram counts must be finite and non-negative")
    total = math.fsum(counts)
    peak = max(counts, default=0)
    ticks = _y_ticks(peak if peak else 3, all(float(c).is_integer() for c in counts))
    left = max(len(_num(tick)) for tick in ticks) * CHAR_WIDTH + 12
    series = Series(quantity, tuple(counts), color)
    legend, rows = _legend_layout([series], [total], left, width - MARGIN_RIGHT)
    bottom = height - 8 - rows * LEGEND_ROW - X_LABEL_HEIGHT
    box = _Box(left, PLOT_TOP, width - MARGIN_RIGHT, max(bottom, PLOT_TOP + MIN_PLOT_HEIGHT))
    chart_id = "chart-" + hashlib.sha256(repr((title, list(edges), list(counts), quantity))
                                         .encode("utf-8", "surrogatepass")).hexdigest()[:10]
    description = (f"{quantity} of {_num(total)} {unit}, in {len(counts)} bins of"
                   f" {x_unit} from {_short(edges[0])} to {_short(edges[-1])}: "
                   + ", ".join(f"{_short(low)}–{_short(high)}: {_num(count)}" for low, high,
                               count in zip(edges, edges[1:], counts, strict=False)) + "."
                   if counts else f"{EMPTY_TEXT.capitalize()}.")
    slot = (box.right - box.left) / max(len(counts), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart histogram"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc"'
        f' font-family="sans-serif" font-size="{FONT_SIZE}" fill="{TEXT_COLOR}">',
        f'<title id="{chart_id}-title">{_text(title)}</title>',
        f'<desc id="{chart_id}-desc">{_text(description)}</desc>',
        f'<text x="{_num(left)}" y="{TITLE_BASELINE}" font-size="13" font-weight="bold">'
        f'{_text(title)}</text>',
        _axis_units(f"y: {unit} per bin · x: {quantity} ({x_unit})", width),
        _y_axis(box, ticks),
        '<g class="x-axis">'
        f'<line x1="{_num(box.left)}" x2="{_num(box.right)}" y1="{_num(box.bottom)}"'
        f' y2="{_num(box.bottom)}" stroke="{AXIS_COLOR}"/>',
    ]
    every = max(1, math.ceil(LABEL_SPACING / slot)) if counts else 1
    for i, edge in enumerate(edges):
        if i % every and i != len(edges) - 1:
            continue
        x = box.left + i * slot
        parts.append(f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(box.bottom)}"'
                     f' y2="{_num(box.bottom + 4)}" stroke="{AXIS_COLOR}"/>'
                     f'<text x="{_num(x)}" y="{_num(box.bottom + 15)}" text-anchor="middle">'
                     f'{_short(edge)}</text>')
    parts.append('</g><g class="bars">')
    for i, count in enumerate(counts):
        if not count:
            continue
        upper = box.y(count, ticks[-1])
        parts.append(
            f'<rect class="bar" data-series="{_text(quantity)}" data-value="{_num(count)}"'
            f' x="{_num(box.left + i * slot + 0.5)}" y="{_num(upper)}"'
            f' width="{_num(max(slot - 1, 0.5))}" height="{_num(box.bottom - upper)}"'
            f' fill="{_text(color)}"><title>{_text(f"{_short(edges[i])}–{_short(edges[i + 1])}")}'
            f' {_text(x_unit)}: {_num(count)} {_text(unit)}</title></rect>')
    parts.append("</g>")
    parts.append(_legend(legend, box.bottom + X_LABEL_HEIGHT + 14))
    if not total:
        parts.append(
            f'<text class="empty" x="{_num((box.left + box.right) / 2)}"'
            f' y="{_num((box.top + box.bottom) / 2)}" text-anchor="middle">{EMPTY_TEXT}</text>')
    parts.append("</svg>")
    return Markup("\n".join(parts))


def _axis_units(text: str, width: int) -> str:
    """What the axes count, in the top right corner."""
    return (f'<text class="units" x="{_num(width - MARGIN_RIGHT)}" y="{TITLE_BASELINE}"'
            f' text-anchor="end" fill="{AXIS_COLOR}">{_text(text)}</text>')


def _short(value: float) -> str:
    """A bin edge in at most four significant digits (0.05, 1250, 3.2e+06)."""
    return f"{value:.4g}"


def lines(title: str, xs: Sequence[float], series: Sequence[Series], *, x_unit: str,
          unit: str, width: int = 720, height: int = 220) -> Markup:
    """An inline `<svg>` line chart: each series one value per x in `xs` (rising), drawn
    as a line with a dot per point, x in `x_unit` and y in `unit` from 0. Raises
    ValueError for xs that do not rise, or series that are not one finite value per x."""
    if any(later <= earlier for earlier, later in zip(xs, xs[1:], strict=False)):
        raise ValueError("line chart xs must rise")
    for s in series:
        if len(s.values) != len(xs) or not all(math.isfinite(v) for v in s.values):
            raise ValueError(f"series {s.name!r}: expected {len(xs)} finite values")
    peak = max((v for s in series for v in s.values), default=0)
    ticks = _y_ticks(peak if peak > 0 else 3, all(float(v).is_integer()
                                                  for s in series for v in s.values))
    x_ticks = _y_ticks(max(xs, default=0) or 3, True)
    left = max(len(_num(tick)) for tick in ticks) * CHAR_WIDTH + 12
    legend, rows = _legend_layout(series, [s.values[-1] if s.values else 0 for s in series],
                                  left, width - MARGIN_RIGHT)
    bottom = height - 8 - rows * LEGEND_ROW - X_LABEL_HEIGHT
    box = _Box(left, PLOT_TOP, width - MARGIN_RIGHT, max(bottom, PLOT_TOP + MIN_PLOT_HEIGHT))

    def x_of(value: float) -> float:
        return round(box.left + value / x_ticks[-1] * (box.right - box.left), 1)

    chart_id = "chart-" + hashlib.sha256(repr((title, list(xs), [(s.name, s.values)
                                                                  for s in series]))
                                         .encode("utf-8", "surrogatepass")).hexdigest()[:10]
    description = "; ".join(f"{s.name}: " + ", ".join(f"{_short(x)} {x_unit}: {_num(v)}"
                                                      for x, v in zip(xs, s.values, strict=True))
                            for s in series) or EMPTY_TEXT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart lines"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc"'
        f' font-family="sans-serif" font-size="{FONT_SIZE}" fill="{TEXT_COLOR}">',
        f'<title id="{chart_id}-title">{_text(title)}</title>',
        f'<desc id="{chart_id}-desc">{_text(description)}.</desc>',
        f'<text x="{_num(left)}" y="{TITLE_BASELINE}" font-size="13" font-weight="bold">'
        f'{_text(title)}</text>',
        _axis_units(f"y: {unit} · x: {x_unit}", width),
        _y_axis(box, ticks),
        '<g class="x-axis">'
        f'<line x1="{_num(box.left)}" x2="{_num(box.right)}" y1="{_num(box.bottom)}"'
        f' y2="{_num(box.bottom)}" stroke="{AXIS_COLOR}"/>',
    ]
    for tick in x_ticks:
        parts.append(f'<text x="{_num(x_of(tick))}" y="{_num(box.bottom + 15)}"'
                     f' text-anchor="middle">{_short(tick)}</text>')
    parts.append('</g><g class="lines">')
    for s in series:
        points = [(x_of(x), box.y(v, ticks[-1])) for x, v in zip(xs, s.values, strict=True)]
        parts.append(f'<polyline data-series="{_text(s.name)}" fill="none"'
                     f' stroke="{_text(s.color)}" stroke-width="2" points="'
                     + " ".join(f"{_num(x)},{_num(y)}" for x, y in points) + '"/>')
        for (x, y), value in zip(points, s.values, strict=True):
            parts.append(f'<circle cx="{_num(x)}" cy="{_num(y)}" r="3"'
                         f' fill="{_text(s.color)}"><title>{_text(s.name)}:'
                         f' {_num(value)} {_text(unit)}</title></circle>')
    parts.append("</g>")
    parts.append(_legend(legend, box.bottom + X_LABEL_HEIGHT + 14))
    parts.append("</svg>")
    return Markup("\n".join(parts))
