"""`tower requests, approve, reject`: productions that wait for a manager."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import ask, json_option, print_json, table
from tower.cli.productions import summaries

#: Production states that wait for a manager.
WAITING = ("requested", "approval")


@click.command()
@json_option
def requests(as_json: bool) -> int:
    """productions waiting for a manager: requests filed by collaborators, and trials that
    ended"""
    rows = [row for row in summaries() if row["state"] in WAITING]
    if as_json:
        print_json({"productions": rows})
        return 0
    if not rows:
        print("nothing waits for approval")
    print("\n".join(table([[row["name"], "request" if row["state"] == "requested"
                            else "trial ended",
                            f"{row['events_total']} events: `tower show {row['name']}`, then "
                            "`tower approve` or `tower reject`"] for row in rows])))
    return 0


@click.command()
@click.argument("production", metavar="PRODUCTION")
@click.option("--tune/--no-tune", default=None,
              help="take the trial's proposed walltime, memory and events per job, or keep "
              "the requested values")
@click.option("--set", "changes", multiple=True, metavar="KEY=VALUE",
              help="change a setting before approving (repeatable)")
@click.option("--note", help="why, for the record")
@json_option
def approve(production: str, tune: bool | None, changes: tuple[str, ...], note: str | None,
            as_json: bool) -> int:
    """approve a request (its jobs, or its trial, start) or a production whose trial ended
    (the rest of its jobs are made)"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import approval, overrides
        from tower.retries import retry

        return approval.approve(session, runtime.config, production, retry.actor(), tune,
                                overrides.parse(list(changes)), note)

    body = {"tune": tune, "set": list(changes), "note": note}
    data = ask("POST", f"/productions/{quote(production)}/approve", local, body=body)
    if as_json:
        print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}: "
              f"{data['jobs_made']} jobs made")
    return 0


@click.command()
@click.argument("production", metavar="PRODUCTION")
@click.option("--reason", required=True)
@json_option
def reject(production: str, reason: str, as_json: bool) -> int:
    """reject a production request"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import approval
        from tower.retries import retry

        return approval.reject(session, production, retry.actor(), reason)

    data = ask("POST", f"/productions/{quote(production)}/reject", local,
               body={"reason": reason})
    if as_json:
        print_json(data)
    else:
        print(f"production {data['production']} is {data['state']}")
    return 0


COMMANDS = [requests, approve, reject]
