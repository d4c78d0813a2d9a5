"""The summary plots of a production's run, as data: one function (`plot_data`) computes the
numbers that the API answers, the downloads (JSON, CSV, SVG, PNG), the production page and
`tower report` all show, so they never disagree.

Time plots cover the production's whole life: from its creation to now, or to its last
ended attempt once it has finished. A life under FINE_SPAN is read from its attempts at
their exact times (bins down to 10 s, so a production of minutes spreads across the plot);
a longer one from the five-minute activity tally (a page costs the same for a campaign of
a million jobs). Distributions read the latest successful attempts (`usage.SAMPLE`).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from markupsafe import Markup
from sqlalchemy import func, select
from sqlmodel import Session, col

from catalog.timeutil import utcnow
from tower.errors import NotFound
from tower.management import progress
from tower.model import tally, usage
from tower.model.models import Attempt, Job, Output, Production
from web import plots

#: A life shorter than this is read from its attempts at their exact times.
FINE_SPAN = timedelta(hours=6)
#: Attempts a fine read takes at most (a production that ends this many attempts within
#: FINE_SPAN is read from the tally instead).
FINE_LIMIT = 100_000
#: Bins of a distribution, at most.
MAX_BINS = 20
#: Colours of stacked series (failure classes; sites), series past the last share it.
COLOURS = ("#c62828", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#558b2f",
           "#37474f")
SITE_COLOURS = ("#1e88e5", "#43a047", "#8e24aa", "#00897b", "#f4511e", "#3949ab", "#c0ca33",
                "#6d4c41")
#: Bars of a time plot at most: a life of minutes gets bins of 10 s or more.
MAX_BARS = 40

#: name: (title, kind, unit, quantity and its unit for distributions)
PLOTS: dict[str, tuple[str, str, str, str]] = {
    "throughput_jobs": ("Jobs done", "time", "jobs", ""),
    "throughput_events": ("Events done", "time", "events", ""),
    "failures": ("Failed attempts by class", "time", "attempts", ""),
    "sites": ("Jobs done per site", "time", "jobs", ""),
    "wall_time": ("Wall time per job", "histogram", "jobs", "wall time|s"),
    "cpu_efficiency": ("CPU efficiency per job", "histogram", "jobs",
                       "CPU / (wall x cores)|fraction"),
    "peak_memory": ("Peak memory per job", "histogram", "jobs", "peak memory|MB"),
    "output_size": ("Output size per job", "histogram", "jobs", "output size|MB"),
}
#: Media types of the downloads.
FORMATS = {"svg": "image/svg+xml", "png": "image/png", "csv": "text/csv; charset=utf-8",
           "json": "application/json"}


def plot_data(session: Session, production: Production, name: str,
              now: datetime | None = None) -> dict[str, Any]:
    """The numbers of one summary plot of `production` (NotFound for an unknown plot)."""
    return plots_data(session, production, [name], now)[name]


def plots_data(session: Session, production: Production, names: Sequence[str],
               now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """The numbers of several summary plots of `production`, each read they share (its
    life, its attempts or activity, its usage) made once: the production page shows all
    eight."""
    for name in names:
        if name not in PLOTS:
            raise NotFound(f"no plot named {name!r} (known: {', '.join(PLOTS)})",
                           field="plot")
    reads = _Reads(session, production, now or utcnow())
    return {name: _plot(reads, name) for name in names}


def _plot(reads: _Reads, name: str) -> dict[str, Any]:
    title, kind, unit, quantity = PLOTS[name]
    head = {"plot": name, "production": reads.production.name, "title": title, "kind": kind,
            "unit": unit}
    if kind == "time":
        return head | _time_plot(reads, name)
    label, x_unit = quantity.split("|")
    values = _per_job(reads, name)
    edges, counts = bins(values, low=0.0 if name == "cpu_efficiency" else None)
    return head | {"quantity": label, "x_unit": x_unit, "jobs": len(values), "edges": edges,
                   "counts": counts}


class _Reads:
    """What a production's plots read, each read once however many plots use it."""

    def __init__(self, session: Session, production: Production, now: datetime) -> None:
        self.session, self.production, self.now = session, production, now
        self.production_id = production.id or 0

    @cached_property
    def life(self) -> tuple[datetime, datetime]:
        return life(self.session, self.production, self.now)

    @cached_property
    def attempts(self) -> list[tuple[datetime, str, str, int]] | None:
        """Its ended attempts at their times, if its life is short and they are few."""
        start, end = self.life
        if end - start > FINE_SPAN:
            return None
        return _attempts(self.session, self.production_id, start)

    @cached_property
    def activity(self) -> list[tally.Point]:
        return tally.activity(self.session, production_id=self.production_id,
                              since=self.life[0])

    @cached_property
    def usage(self) -> list[Any]:
        return usage.latest(self.session, self.production_id)


def life(session: Session, production: Production, now: datetime) -> tuple[datetime, datetime]:
    """From the production's creation to now, or to its last ended attempt once finished
    (or cancelled)."""
    start = plots.utc(production.created_at)
    end = now
    states = {state: count.jobs for state, count in
              tally.counts(session, production.id).get(production.id or 0, {}).items()}
    if progress.phase(production.state, states) in ("finished", "cancelled"):
        last = session.execute(select(func.max(Attempt.ended_at)).join(
            Job, col(Job.id) == col(Attempt.job_id)).where(
            col(Job.production_id) == production.id)).scalar_one()
        if last is not None:
            end = min(now, plots.utc(last) + timedelta(seconds=1))
    return start, max(end, start + timedelta(minutes=1))


def _time_plot(reads: _Reads, name: str) -> dict[str, Any]:
    start, end = reads.life
    points: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    rows = reads.attempts
    fine = rows is not None
    if rows is None:
        for point in reads.activity:
            _add(points, name, point.bucket, point.site, point.kind, point.count,
                 point.events)
    else:
        for ended, site, outcome, events in rows:
            kind = tally.DONE if outcome == "success" else outcome
            _add(points, name, plots.utc(ended), site, kind, 1, events)
    starts, step, values = plots.buckets(
        points, start, end, MAX_BARS, min_step=plots.STEPS[0] if fine else plots.FIVE_MINUTES)
    names = sorted(values, key=lambda series: (-sum(values[series]), series))
    return {"start": start.isoformat(), "end": end.isoformat(),
            "step_seconds": int(step.total_seconds()),
            "source": "attempts" if fine else "activity tally",
            "bins": [moment.isoformat() for moment in starts],
            "series": {series: values[series] for series in names}}


def _add(points: dict[datetime, dict[str, float]], name: str, moment: datetime, site: str,
         kind: str, count: int, events: int) -> None:
    done = kind == tally.DONE
    if name == "throughput_jobs" and done:
        points[moment]["jobs"] += count
    elif name == "throughput_events" and done:
        points[moment]["events"] += events
    elif name == "sites" and done:
        points[moment][site or "(none)"] += count
    elif name == "failures" and kind not in progress.NOT_FAILED:
        points[moment][kind] += count


def _attempts(session: Session, production_id: int, since: datetime
              ) -> list[tuple[datetime, str, str, int]] | None:
    """Ended attempts (time, site, outcome, events) of the production; None when more
    than FINE_LIMIT (read the tally then)."""
    rows = session.execute(
        select(col(Attempt.ended_at), col(Attempt.site), col(Attempt.outcome), col(Job.events))
        .join(Job, col(Job.id) == col(Attempt.job_id))
        .where(col(Job.production_id) == production_id, col(Attempt.ended_at).is_not(None),
               col(Attempt.ended_at) >= since)
        .limit(FINE_LIMIT + 1)).all()
    if len(rows) > FINE_LIMIT:
        return None
    return [(ended, site, outcome or "", events) for ended, site, outcome, events in rows]


def _per_job(reads: _Reads, name: str) -> list[float]:
    if name == "output_size":
        sizes = reads.session.execute(
            select(func.sum(Output.size)).join(Job, col(Job.id) == col(Output.job_id))
            .where(col(Job.production_id) == reads.production_id)
            .group_by(col(Output.job_id)).limit(usage.SAMPLE)).scalars().all()
        return [int(size) / 1e6 for size in sizes]
    rows = reads.usage
    if name == "wall_time":
        return [row.wall_seconds for row in rows]
    if name == "peak_memory":
        return [float(row.max_rss_mb) for row in rows if row.max_rss_mb is not None]
    return [row.cpu_seconds / (row.wall_seconds * row.cores) for row in rows
            if row.cpu_seconds is not None and row.wall_seconds > 0]


def bins(values: Sequence[float], low: float | None = None, max_bins: int = MAX_BINS
         ) -> tuple[list[float], list[int]]:
    """Round bin edges (a 1, 2 or 5 x 10^n width) covering `values`, at most `max_bins`
    bins, and the count in each; the last bin holds its upper edge too."""
    if not values:
        return [], []
    lowest = min(values) if low is None else min(low, min(values))
    highest = max(values)
    width = _nice((highest - lowest) / max_bins if highest > lowest else abs(highest) or 1.0)
    first = math.floor(lowest / width) * width
    count = max(1, math.ceil((highest - first) / width))
    while count > max_bins:
        width = _nice(width * 1.01)
        first = math.floor(lowest / width) * width
        count = max(1, math.ceil((highest - first) / width))
    edges = [float(f"{first + i * width:.10g}") for i in range(count + 1)]
    counts = [0] * count
    for value in values:
        counts[min(count - 1, int((value - first) // width))] += 1
    return edges, counts


def _nice(width: float) -> float:
    """The smallest 1, 2 or 5 x 10^n at or above `width`."""
    exponent = math.floor(math.log10(width))
    for multiple in (1, 2, 5, 10):
        candidate = multiple * 10.0**exponent
        if candidate >= width * (1 - 1e-9):
            return float(f"{candidate:.10g}")
    raise AssertionError("unreachable")


# -- the plot in each format -----------------------------------------------------------------

def svg(data: dict[str, Any]) -> Markup:
    """The plot of `plot_data`'s numbers."""
    title = f"{data['title']} — {data['production']}"
    if data["kind"] == "histogram":
        return plots.histogram(title, data["edges"], data["counts"], quantity=data["quantity"],
                               x_unit=data["x_unit"], unit=data["unit"])
    step = timedelta(seconds=data["step_seconds"])
    starts = [datetime.fromisoformat(moment) for moment in data["bins"]]
    series = [plots.Series(name, tuple(values), _colour(data["plot"], i))
              for i, (name, values) in enumerate(data["series"].items())]
    return plots.stacked_bars(title, starts, step, series, unit=data["unit"])


def _colour(plot: str, index: int) -> str:
    if plot.startswith("throughput"):
        return "#2e7d32"
    palette = SITE_COLOURS if plot == "sites" else COLOURS
    return palette[min(index, len(palette) - 1)]


def png(data: dict[str, Any]) -> bytes:
    """The SVG rendered by cairosvg (on the system's cairo library)."""
    import cairosvg

    picture: bytes = cairosvg.svg2png(bytestring=str(svg(data)).encode(), background_color="white")
    return picture


def table(data: dict[str, Any]) -> str:
    """The numbers as CSV: a row per bin."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if data["kind"] == "histogram":
        writer.writerow(["low", "high", data["unit"]])
        for low, high, count in zip(data["edges"], data["edges"][1:], data["counts"],
                                    strict=False):
            writer.writerow([low, high, count])
    else:
        names = list(data["series"])
        writer.writerow(["bin_start", *names])
        for i, moment in enumerate(data["bins"]):
            writer.writerow([moment, *(_plain(data["series"][name][i]) for name in names)])
    return out.getvalue()


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def render(data: dict[str, Any], fmt: str) -> bytes:
    """The download of one plot in `fmt` (one of FORMATS)."""
    import json

    from catalog.timeutil import jsonable

    if fmt == "svg":
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + str(svg(data))).encode()
    if fmt == "png":
        return png(data)
    if fmt == "csv":
        return table(data).encode()
    if fmt == "json":
        return json.dumps(data, default=jsonable, indent=1).encode()
    raise NotFound(f"no format {fmt!r} (known: {', '.join(FORMATS)})", field="format")
