"""`tower pilots`: the pilots, newest first."""

from __future__ import annotations

from typing import Any

import click

from tower.cli.common import LazyChoice, ask, json_option, pilot_states, print_json, table


@click.command()
@click.option("--site")
@click.option("--state", type=LazyChoice("STATE", pilot_states), help="a pilot state")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def pilots(site: str | None, state: str | None, limit: int, as_json: bool) -> int:
    """pilots, newest first"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.model import fleet

        return {"pilots": fleet.listing(session, site, state, limit)}

    params = {"site": site, "state": state, "limit": limit}
    rows = ask("GET", "/pilots", local, params=params)["pilots"]
    if as_json:
        print_json({"pilots": rows})
        return 0
    lines = [["pilot", "site", "queue", "state", "batch id", "submitted", "message"]]
    lines += [[row["id"][:12], row["site"], row["queue"], row["state"], row["batch_id"] or "-",
               row["submitted_at"][:19], row["message"] or ""] for row in rows]
    print("\n".join(table(lines)))
    return 0


COMMANDS = [pilots]
