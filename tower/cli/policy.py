"""`tower policy list, show, check, simulate`: the retry policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from tower.cli.common import (
    Group,
    ask,
    config,
    json_option,
    natural,
    print_json,
    print_rows,
    remote,
    table,
)


@click.group(cls=Group)
def policy() -> None:
    """retry policies: `policy list`, `policy show NAME`, `policy check FILE`, `policy
    simulate NAME --production P`"""


def policies() -> dict[str, Any]:
    """{"default": name, "policies": {name: body}}, as the API's /policies answers."""
    far = remote()
    if far is not None:
        try:
            return far.call("GET", "/policies")  # type: ignore[no-any-return]
        finally:
            far.close()
    loaded = config()
    return {"default": loaded.retry.policy, "policies": {
        name: body.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, body in loaded.policies.items()}}


def known(name: str, data: dict[str, Any], action: str) -> None:
    from tower.errors import NotFound

    if name not in data["policies"]:
        raise NotFound(f"policy {action}: no policy named {name!r} (known: "
                       f"{', '.join(sorted(data['policies'], key=natural))})", field="name")


@policy.command("list")
@json_option
def list_policies(as_json: bool) -> int:
    """the policies, with their descriptions; the default is marked"""
    data = policies()
    rows = [{"name": name, "default": name == data["default"],
             "description": body.get("description")}
            for name, body in sorted(data["policies"].items(), key=lambda item: natural(item[0]))]
    if as_json:
        print_json({"policies": rows})
        return 0
    print("\n".join(table([[row["name"], "(default)" if row["default"] else "",
                            row["description"] or ""] for row in rows])))
    return 0


@policy.command()
@click.argument("name", metavar="NAME")
@json_option
def show(name: str, as_json: bool) -> int:
    """one policy's rules"""
    import yaml

    data = policies()
    known(name, data, "show")
    body = data["policies"][name]
    if as_json:
        print_json({"name": name, "policy": body})
    else:
        print(yaml.safe_dump({name: body}, sort_keys=False), end="")
    return 0


@policy.command()
@click.argument("file", metavar="FILE", type=click.Path(path_type=Path))
@json_option
def check(file: Path, as_json: bool) -> int:
    """check a policies file (no tower needed)"""
    from tower.retries.policy import load_policies

    path = file.resolve()
    names = sorted(load_policies(str(path), path.parent), key=natural)
    if as_json:
        print_json({"file": str(path), "policies": names})
    else:
        print(f"{path}: valid; policies: {', '.join(names)}")
    return 0


@policy.command()
@click.argument("name", metavar="NAME")
@click.option("--production", required=True, help="the production whose attempts to replay")
@json_option
def simulate(name: str, production: str, as_json: bool) -> int:
    """replay a production's ended attempts through a policy: which decisions would differ"""
    def local(runtime: Any, session: Any) -> Any:
        from tower.management import productions
        from tower.retries import replay

        known(name, {"policies": runtime.config.policies}, "simulate")
        return replay.simulate(session, productions.get(session, production), name,
                               runtime.config.policies[name])

    data = ask("GET", f"/policies/{quote(name)}/simulate", local,
               params={"production": production})
    if as_json:
        print_json(data)
        return 0
    print_rows(f"{data['production']} replayed through policy {data['policy']}: "
               f"{data['different']} of {data['decisions']} decisions would differ", [
                   *(f"{change['count']:>6}  {change['class']:<15} {change['recorded']} -> "
                     f"{change['simulated']}" for change in data["changes"]),
                   *(f"job {example['job']} attempt {example['attempt']}:\n      was      "
                     f"{example['recorded']}\n      would be {example['simulated']}"
                     for example in data["examples"])])
    return 0


COMMANDS = [policy]
