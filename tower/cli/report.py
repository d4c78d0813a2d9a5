"""`tower report`: a production's summary plots as files for a meeting, with a one-page
HTML summary."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import ask, json_option, print_json

#: Every plot is written in each of these formats.
FORMATS = ("svg", "png", "csv", "json")


@click.command()
@click.argument("production", metavar="PRODUCTION")
@click.option("--out", "out", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="the directory to write into (made if missing)")
@json_option
def report(production: str, out: Path, as_json: bool) -> int:
    """write a production's summary plots (wall time, CPU efficiency, peak memory and output
    size per job; throughput, failures by class and jobs per site over its life) as SVG,
    PNG, CSV and JSON, with index.html: a one-page summary to show at a meeting"""
    from tower.management import productions
    from web import summary

    def one(plot: str) -> Any:
        def local(runtime: Any, session: Any) -> Any:
            return summary.plot_data(session, productions.get(session, production), plot)
        return local

    about = ask("GET", f"/productions/{quote(production)}",
                lambda runtime, session: productions.summaries(session, production)[0])
    plots = {plot: ask("GET", f"/productions/{quote(production)}/plots/{quote(plot)}",
                       one(plot)) for plot in summary.PLOTS}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plot, data in plots.items():
        for fmt in FORMATS:
            path = out / f"{plot}.{fmt}"
            _write(path, summary.render(data, fmt))
            written.append(path)
    index = out / "index.html"
    _write(index, _page(about, plots).encode())
    written.append(index)
    if as_json:
        print_json({"production": production, "files": [str(path) for path in written]})
    else:
        print(f"{production}: wrote {len(written)} files to {out} (open {index})")
    return 0


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a partial name renamed once written."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _page(about: dict[str, Any], plots: dict[str, dict[str, Any]]) -> str:
    from web import summary

    name = html.escape(about["name"])
    states = ", ".join(f"{html.escape(state)} {count:,}"
                       for state, count in sorted(about["states"].items()))
    cells = []
    for plot, data in plots.items():
        links = " · ".join(f'<a href="{plot}.{fmt}">{fmt.upper()}</a>' for fmt in FORMATS)
        cells.append(f'<figure data-plot="{plot}">{summary.svg(data)}'
                     f"<figcaption>{links}</figcaption></figure>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: run summary</title>
<style>body{{font-family:sans-serif;margin:1em}} .plots{{display:grid;
grid-template-columns:repeat(auto-fill,minmax(740px,1fr));gap:8px}}
figure{{margin:0}} svg{{max-width:100%;height:auto}}</style></head>
<body><h1>{name}</h1>
<p>State <strong>{html.escape(str(about["state"]))}</strong>: {about["jobs"]:,} jobs
({states}); events done {about.get("events_done", 0):,} of {about.get("events_total", 0):,}.</p>
<div class="plots">{"".join(cells)}</div></body></html>
"""


COMMANDS = [report]
