"""A site over a chosen window (1 h, 24 h, 7 d, 30 d): what it did (jobs done, failures by
class, from the activity tally) and how it was supplied (pilots pending, running and
draining, payload slots busy, the factory's submissions and cancellations, from its
history), all on one time axis; the numbers as the API gives them, the plots for the
site page."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlmodel import Session

from catalog.timeutil import utcnow
from tower.errors import NotFound
from tower.management import progress
from tower.model import history, tally
from web import plots

#: The windows a site page offers, by the name its links use.
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}
DEFAULT_WINDOW = "24h"
PILOT_COLOURS = {"pending": "#90caf9", "running": "#1e88e5", "draining": "#ffb300"}
FAILURE_COLOURS = ("#c62828", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e",
                   "#558b2f", "#37474f")


def window_of(name: str | None) -> str:
    """The window's name, checked (NotFound naming the choices)."""
    chosen = name or DEFAULT_WINDOW
    if chosen not in WINDOWS:
        raise NotFound(f"no window {chosen!r} (known: {', '.join(WINDOWS)})", field="window")
    return chosen


def site_data(session: Session, site: str, window: str, now: datetime | None = None
              ) -> dict[str, Any]:
    """The site's numbers over the window: each series per bin (one step for all)."""
    end = now or utcnow()
    start = end - WINDOWS[window]
    done: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    failed: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for point in tally.activity(session, site=site, since=start):
        if point.kind == tally.DONE:
            done[point.bucket]["jobs"] += point.count
            done[point.bucket]["events"] += point.events
        elif point.kind not in progress.NOT_FAILED:
            failed[point.bucket][point.kind] += point.count
    levels: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    decisions: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    samples: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for sample in history.read(session, site, start, end):
        for name in (*history.LEVELS, "busy"):
            levels[sample.at][name] += getattr(sample, name)
        samples[sample.at]["n"] += 1
        decisions[sample.at]["submitted"] += sample.submitted
        decisions[sample.at]["cancelled"] += sample.cancelled
    starts, step, done_values = plots.buckets(done, start, end)
    _, _, failed_values = plots.buckets(failed, start, end)
    _, _, level_sums = plots.buckets(levels, start, end)
    _, _, counts = plots.buckets(samples, start, end)
    _, _, decided = plots.buckets(decisions, start, end)
    taken = counts.get("n", [0.0] * len(starts))
    # a level is the mean of the samples in the bin, not their sum
    means = {name: [round(total / n, 2) if n else 0.0 for total, n in zip(values, taken,
                                                                        strict=True)]
             for name, values in level_sums.items()}
    zero = [0.0] * len(starts)
    return {
        "site": site, "window": window, "start": start.isoformat(), "end": end.isoformat(),
        "step_seconds": int(step.total_seconds()),
        "bins": [moment.isoformat() for moment in starts],
        "jobs_done": done_values.get("jobs", zero), "events_done": done_values.get("events", zero),
        "failures": dict(sorted(failed_values.items(), key=lambda kv: -sum(kv[1]))),
        "pilots": {name: means.get(name, zero) for name in history.LEVELS},
        "slots_busy": means.get("busy", zero),
        "factory": {name: decided.get(name, zero) for name in ("submitted", "cancelled")},
    }


def site_plots(data: dict[str, Any]) -> list[tuple[str, Markup]]:
    """The site page's plots of `site_data`'s numbers, in order."""
    starts = [datetime.fromisoformat(moment) for moment in data["bins"]]
    step = timedelta(seconds=data["step_seconds"])
    span = f"last {data['window']}"

    def chart(title: str, series: list[plots.Series], unit: str, level: bool = False) -> Markup:
        return plots.stacked_bars(f"{title}, {span}", starts, step, series, unit=unit,
                                  level=level)

    return [
        ("throughput", chart("Jobs done", [plots.Series("done", tuple(data["jobs_done"]),
                                                        "#2e7d32")], "jobs")),
        ("events", chart("Events done", [plots.Series("events", tuple(data["events_done"]),
                                                      "#2e7d32")], "events")),
        ("failures", chart("Failed attempts by class", [
            plots.Series(kind, tuple(values), FAILURE_COLOURS[min(i, len(FAILURE_COLOURS) - 1)])
            for i, (kind, values) in enumerate(data["failures"].items())], "attempts")),
        ("pilots", chart("Pilots by state", [
            plots.Series(name, tuple(values), PILOT_COLOURS[name])
            for name, values in data["pilots"].items()], "pilots", level=True)),
        ("slots", chart("Payload slots busy", [
            plots.Series("busy", tuple(data["slots_busy"]), "#1e88e5")], "slots", level=True)),
        ("factory", chart("Factory decisions", [
            plots.Series("submitted", tuple(data["factory"]["submitted"]), "#2e7d32"),
            plots.Series("cancelled", tuple(data["factory"]["cancelled"]), "#c62828")],
            "pilots")),
    ]
