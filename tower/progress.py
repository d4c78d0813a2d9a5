"""Progress of a production as text: a bar stacked by job state."""

from __future__ import annotations

from collections.abc import Mapping

#: Bar characters, in the order states fill the bar from the left.
SYMBOLS = (("done", "#"), ("staging", "+"), ("running", ">"), ("queued", "~"),
           ("assigned", "~"), ("failed", "x"), ("cancelled", "-"), ("held", "!"))


def bar(counts: Mapping[str, int], width: int = 40) -> str:
    """`[####>>~~......]  45%`: one character per share of jobs, the rest defined."""
    total = sum(counts.values())
    if total == 0:
        return "[" + " " * width + "]    -"
    cells = ""
    for state, symbol in SYMBOLS:
        cells += symbol * round(width * counts.get(state, 0) / total)
    cells = cells[:width].ljust(width, ".")
    percent = 100 * counts.get("done", 0) / total
    return f"[{cells}] {percent:3.0f}%"
