"""`tower jobs, job, held, hold, release, why`: single jobs, and holding them back."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import (
    LazyChoice,
    ask,
    job_states,
    json_option,
    print_json,
    print_rows,
    report_moved,
    table,
)


@click.command()
@click.option("--production")
@click.option("--state", type=LazyChoice("STATE", job_states), help="a job state")
@click.option("--site")
@click.option("--after", type=int, default=0, help="only jobs with a larger id")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def jobs(production: str | None, state: str | None, site: str | None, after: int, limit: int,
         as_json: bool) -> int:
    """list jobs, filtered; page with --after"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.model import jobs as listing

        return listing.page(session, production=production, state=state, site=site,
                            after=after, limit=limit)

    params = {"production": production, "state": state, "site": site, "after": after,
              "limit": limit}
    data = ask("GET", "/jobs", local, params=params)
    if as_json:
        print_json(data)
        return 0
    rows = [["id", "production", "index", "state", "site", "attempt", "message"]]
    rows += [[row["id"], row["production"], row["index"], row["state"], row["site"] or "-",
              row["attempt"], row["message"] or ""] for row in data["jobs"]]
    print("\n".join(table(rows, right="025")))
    return 0


def print_history(history: list[dict[str, str]]) -> None:
    """A job's moves, as its page and `tower why` show them."""
    print_rows("history:", (f"{event['at'][:19]}  {event['from']:>9} -> {event['to']:<9} "
                            f"{event['reason']}" for event in history))


@click.command()
@click.argument("job_id", type=int, metavar="JOB")
@json_option
def job(job_id: int, as_json: bool) -> int:
    """one job with all its attempts and its moves"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.model import jobs as listing

        return listing.show(session, job_id)

    row = ask("GET", f"/jobs/{job_id}", local)
    if as_json:
        print_json(row)
        return 0
    print_rows(f"job {row['id']} of {row['production']}: stream {row['index']}, seed "
               f"{row['seed']}, events {row['first_event']}.."
               f"{row['first_event'] + row['events'] - 1}, {row['state']}",
               (f"attempt {attempt['number']} on {attempt['site']} pilot "
                f"{(attempt['pilot_id'] or '-')[:8]}: {attempt['outcome'] or 'running'} "
                f"{attempt['reason'] or ''}" for attempt in row["attempts"]))
    # a tower older than the history in this answer shows none
    print_history(row.get("history", []))
    return 0


@click.command()
@click.argument("production", required=False, metavar="PRODUCTION")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def held(production: str | None, limit: int, as_json: bool) -> int:
    """held jobs, with who or which rule held them, and why"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions
        from tower.retries import retry

        return {"held": retry.held(
            session, productions.get(session, production) if production else None, limit)}

    params = {"production": production, "limit": limit}
    rows = ask("GET", "/held", local, params=params)["held"]
    if as_json:
        print_json({"held": rows})
        return 0
    if not rows:
        print("no held jobs")
    for row in rows:
        print(f"job {row['id']} (stream {row['index']}, attempt {row['attempt']}) held by "
              f"{row['held_by']} since {row['since'].replace('T', ' ')}: {row['reason']}")
    return 0


def move_jobs(action: str, verb: str, ids: tuple[int, ...], production: str | None,
              as_json: bool) -> int:
    from tower.errors import ConfigError

    def local(runtime: Any, session: Any) -> Any:
        from tower.retries import retry

        return {verb: retry.act_on(session, action, list(ids), production, retry.actor())}

    if not ids and not production:
        raise ConfigError(f"{action}: give JOB ids or --production", field="jobs")
    body = {"jobs": list(ids), "production": production}
    data = ask("POST", f"/jobs/{action}", local, body=body)
    return report_moved(verb, data[verb], as_json)


def mover(action: str, verb: str, summary: str) -> click.Command:
    @click.command(action, help=summary)
    @click.argument("ids", nargs=-1, type=int, metavar="JOB...")
    @click.option("--production", help="every such job of this production")
    @json_option
    def command(ids: tuple[int, ...], production: str | None, as_json: bool) -> int:
        return move_jobs(action, verb, ids, production, as_json)

    return command


hold = mover("hold", "held", "hold jobs that have not started: they wait for `tower release`")
release = mover("release", "released", "let held jobs run again, with a fresh retry budget")


@click.command()
@click.argument("target", metavar="JOB|PRODUCTION")
@json_option
def why(target: str, as_json: bool) -> int:
    """why a job is where it is: what it waits for, which rule retried or held it, and
    its history; or what a production waits for (a step of a chain, its upstream)"""
    if not target.isdigit():
        return _why_production(target, as_json)
    job_id = int(target)

    def local(runtime: Any, session: Any) -> Any:
        from tower.management import why as explaining

        return explaining.explain(session, runtime.config, job_id)

    data = ask("GET", f"/jobs/{job_id}/why", local)
    if as_json:
        print_json(data)
        return 0
    print_rows(f"job {data['job']} of {data['production']} is {data['state']} "
               f"(attempt {data['attempt']}{', site ' + data['site'] if data['site'] else ''})",
               data["why"])
    if data["decisions"]:
        print_rows("decisions:", (f"{row['at'][:19]}  after attempt {row['attempt']}: "
                                  f"{'(passive) ' if row['passive'] else ''}{row['by']}: "
                                  f"{row['reason']}" for row in data["decisions"]))
    print_history(data["history"])
    return 0


def _why_production(name: str, as_json: bool) -> int:
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import why as explaining

        return explaining.explain_production(session, runtime.config, name)

    data = ask("GET", f"/productions/{quote(name)}/why", local)
    if as_json:
        print_json(data)
        return 0
    print_rows(f"production {data['production']} is {data['phase']}", data["why"])
    return 0


COMMANDS = [jobs, job, held, hold, release, why]
