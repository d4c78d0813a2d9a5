"""`tower sites [list|check|explain]`: the site queues, a site's access, the factory's
decisions about it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from tower.cli.common import Group, ask, by_name, json_option, local_only, print_json, runtime

if TYPE_CHECKING:
    from sites.config import SiteConfig
    from tower.runtime import Runtime


def listing(as_json: bool, check: bool = False) -> int:
    def local(opened: Runtime, session: Any) -> dict[str, Any]:
        from tower.loops.site_status import site_queues

        rows, problem = site_queues(opened, live=check)
        return {"sites": rows, "broker_error": problem, "insecure": opened.config.api.exposed}

    data = ask("GET", "/sites?live=true" if check else "/sites", local)
    rows, problem = by_name(data["sites"], "site"), data["broker_error"]
    if as_json:
        print_json({**data, "sites": rows})
        return 1 if problem else 0
    if data.get("insecure"):
        print("\033[1;31mtower: the API serves plain HTTP to other hosts (api.insecure): "
              "every caller may do everything\033[0m")
    width = max([len("site"), *(len(row["site"]) for row in rows)])
    print(f"{'site':<{width}} {'queue':<10} {'batch':<8} {'pilots p/r/d/e/l':>16} {'waiting':>8} "
          f"{'backlog':>9} {'broker':>7}")
    for row in rows:
        pilots = "/".join(str(count) for count in row["pilots"].values())
        held = ("disabled" if not row["enabled"] else "cooling" if row["cooling_until"]
                else f"{row['backlog']}/{row['bound']}")
        broker = "?" if row["broker"] is None else str(row["broker"])
        print(f"{row['site']:<{width}} {row['queue']:<10} {row['batch']:<8} {pilots:>16} "
              f"{row['waiting']:>8} {held:>9} {broker:>7}")
        if row["cooling_until"]:
            print(f"{'':<{width}} out of brokering until {row['cooling_until'][11:19]} UTC: "
                  f"{row['cooling_reason']}")
        if row.get("credential"):
            print(f"{'':<{width}} credential: {row['credential']}")
        if row["last_error"]:
            print(f"{'':<{width}} last error {row['last_error_at'][:19].replace('T', ' ')}: "
                  f"{row['last_error']}")
    if problem:
        print(f"tower: broker unreachable: {problem}", file=sys.stderr)
        return 1
    return 0


#: `tower sites --live`: the credential read from each batch system now.
live_option = click.option("--live", "check", is_flag=True,
                           help="read each site's credential from its batch system now "
                                "(a call to each ARC CE), not the monitor's last read")


@click.group(cls=Group, invoke_without_command=True)
@json_option
@live_option
@click.pass_context
def sites(ctx: click.Context, as_json: bool, check: bool) -> int | None:
    """sites: `sites` lists each site queue (pilots, jobs waiting, backlog and bound, broker
    depth, last error, the credential as the monitor last read it); `sites check NAME`
    tests access, batch commands, pilot program and paths; `sites explain NAME` shows the
    factory's recent decisions"""
    return listing(as_json, check) if ctx.invoked_subcommand is None else None


@sites.command("list")
@json_option
@live_option
def list_sites(as_json: bool, check: bool) -> int:
    """each site queue (the same as `tower sites`)"""
    return listing(as_json, check)


def site(opened: Runtime, name: str) -> SiteConfig:
    from tower.errors import NotFound

    if name not in opened.config.sites:
        raise NotFound(f"no site {name!r} (known: {', '.join(opened.config.sites)})",
                       field="name")
    return opened.config.sites[name]


@sites.command()
@click.argument("name", metavar="NAME")
@json_option
def check(name: str, as_json: bool) -> int:
    """test a site's access, batch commands, pilot program and paths"""
    from tower.loops.factory import pilot_command
    from tower.loops.site_check import check_site

    local_only()
    opened = runtime()
    try:
        chosen = site(opened, name)
        batch = opened.batch_system(chosen.name)
        checks = check_site(chosen, batch, opened.runner(chosen.name), pilot_command(chosen))
    finally:
        opened.close()
    if as_json:
        print_json({"site": chosen.name, "checks": [vars(result) for result in checks]})
    else:
        for result in checks:
            print(f"{'PASS' if result.passed else 'FAIL'}  {result.name}: {result.detail}")
    return 0 if all(result.passed for result in checks) else 1


@sites.command()
@click.argument("name", metavar="NAME")
@click.option("--limit", type=int, default=20, show_default=True, help="decisions shown")
@json_option
def explain(name: str, limit: int, as_json: bool) -> int:
    """the factory's recent decisions about a site"""
    def local(opened: Runtime, session: Any) -> dict[str, Any]:
        from tower.loops import factory

        site(opened, name)
        return {"site": name, "decisions": [
            row.model_dump(mode="json")
            for row in factory.recent_decisions(session, name, limit)]}

    data = ask("GET", f"/sites/{quote(name)}/decisions", local, params={"limit": limit})
    rows = data["decisions"]
    if as_json:
        print_json(data)
        return 0
    if not rows:
        print(f"site {name}: no factory decision yet (is `tower run` running, and the "
              "site enabled?)")
    for row in reversed(rows):
        print(f"{row['at'][:19]}  {row['queue']:<10} {row['note']}")
    return 0


COMMANDS = [sites]
