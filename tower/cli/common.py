"""What every `tower` command shares: the global options, how a command gets its data
(a remote tower's API, or the database beside it), JSON and table output.

Only click and the standard library are imported here: `tower --help`, every `--help`
and the remote commands must not pay for SQLAlchemy and the models. Commands import
what they need inside their function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlmodel import Session

    from tower.remote import Remote
    from tower.runtime import Runtime


@dataclass
class State:
    """The global options, and what the command learnt that an error message needs."""

    config: str | None = None
    verbose: bool = False
    url: str | None = None
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    client_config: str | None = None
    #: --json was given: an error is printed as JSON on stdout too.
    json: bool = False
    #: The database the command opened (password redacted), for its errors.
    database: str | None = None


def state() -> State:
    return click.get_current_context().find_object(State) or State()


class HelpFormatter(click.HelpFormatter):
    # `usage:` as argparse wrote it, which scripts and tests look for
    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, args, "usage: " if prefix is None else prefix)


class Context(click.Context):
    formatter_class = HelpFormatter


class Command(click.Command):
    context_class = Context


class Group(click.Group):
    """A noun's group; its commands are listed in the order they were defined."""

    context_class = Context
    command_class = Command
    group_class = type

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # every command's help writes `usage:` as its group's does
        cmd.context_class = Context
        super().add_command(cmd, name)


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: print JSON for scripts (and errors as JSON on stdout)."""
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            state().json = True
        return value

    return click.option("--json", "as_json", is_flag=True, callback=remember,
                        help="print JSON for scripts")(function)


class LazyChoice(click.ParamType):
    """A choice among values known only after a heavy import (the state enums): the import
    happens when the option is given or completed, never for --help."""

    def __init__(self, metavar: str, load: Callable[[], Iterable[str]]) -> None:
        self.metavar, self.load = metavar, load
        self.name = metavar.lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        known = [str(choice) for choice in self.load()]
        if value not in known:
            self.fail(f"{value!r} is not one of {', '.join(known)}", param, ctx)
        return str(value)

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(choice) for choice in map(str, self.load())
                if choice.startswith(incomplete)]


def job_states() -> list[str]:
    from tower.model.states import JobState

    return [state.value for state in JobState]


def pilot_states() -> list[str]:
    from tower.model.states import PilotState

    return [state.value for state in PilotState]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def natural(name: str) -> list[Any]:
    """Sort key: `decays_2` before `decays_10` (runs of digits compare as numbers)."""
    # ASCII digits only: int() refuses some characters that str.isdigit() accepts ('²')
    return [int(part) if part.isascii() and part.isdigit() else part.lower()
            for part in re.split(r"([0-9]+)", name)]


def by_name(rows: list[dict[str, Any]], key: str = "name") -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: natural(str(row[key])))


def table(rows: Sequence[Sequence[Any]], right: str = "") -> list[str]:
    """Rows as lines with aligned columns, each as wide as its widest cell; the columns
    whose index is in `right` (e.g. "02") align right; the last column is never padded."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))] if cells else []
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if str(i) in right else
                 cell if i == len(row) - 1 else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return lines


def print_rows(head: str, rows: Iterable[str], indent: str = "  ") -> None:
    """A summary line, then one line per row under it, indented by `indent`."""
    print(head)
    for row in rows:
        print(indent + row)


def remote() -> Remote | None:
    """The remote tower the global options (or the client file) name, if any."""
    from tower.remote import Remote, client_settings

    given = state()
    settings = client_settings(given.url, given.cert, given.key, given.ca, given.client_config)
    return Remote(settings) if settings is not None else None


def runtime(create: bool = True) -> Runtime:
    """The tower beside its database, for commands that work there."""
    from pilots.urls import redact
    from tower.config import load_config
    from tower.runtime import Runtime

    config = load_config(state().config)
    state().database = redact(config.database_url)
    return Runtime.open(config, create)


def config() -> Any:
    from tower.config import load_config

    return load_config(state().config)


def ask(method: str, path: str, local: Callable[[Runtime, Session], Any],
        params: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Any:
    """A command's data: from the remote tower's API when one is given, else computed here
    beside the database (in one transaction, for a POST); the same JSON either way."""
    far = remote()
    if far is not None:
        try:
            return far.call(method, path, params, body)
        finally:
            far.close()
    from sqlmodel import Session

    from catalog.timeutil import jsonable
    from tower.model.db import transaction

    opened = runtime()
    try:
        with (transaction(opened.engine) if method == "POST"
              else Session(opened.engine)) as session:
            return json.loads(json.dumps(local(opened, session), default=jsonable))
    finally:
        opened.close()


def read(path: str, local: Callable[[Any], Any]) -> Any:
    """A reading command's data: from the remote tower's API when one is given, else read
    here with plain SQL over the database driver's connection (`local` gets it), without
    SQLAlchemy and the models (tower.model.reads); the same JSON either way. A read makes
    no database: a SQLite file not made yet reads as empty."""
    far = remote()
    if far is not None:
        try:
            return far.call("GET", path)
        finally:
            far.close()
    from catalog.timeutil import jsonable
    from pilots.urls import redact
    from tower.model import reads, revision

    url = config().database_url
    state().database = redact(url)
    connection = reads.connect(url)
    try:
        if connection is not None:  # a database of another schema revision: one line
            revision.check(connection.cursor(), redact(url))
        return json.loads(json.dumps(local(connection), default=jsonable))
    finally:
        if connection is not None:
            connection.close()


def local_only() -> None:
    """Refuse a remote tower for a command that works beside the database only."""
    if remote() is not None:
        from tower.errors import ConfigError

        name = click.get_current_context().command_path.split(" ", 1)[-1]
        raise ConfigError(f"{name}: works beside the database only, not through "
                          "a remote tower (drop --url)", field="url")


def report_moved(verb: str, moved: list[int], as_json: bool, dry_run: bool = False) -> int:
    if dry_run:
        verb = f"would be {verb}"
    if as_json:
        print_json({verb.replace(" ", "_"): moved, "count": len(moved)})
    else:
        shown = ", ".join(map(str, moved[:20])) + (" ..." if len(moved) > 20 else "")
        print(f"{len(moved)} jobs {verb}" + (f": {shown}" if moved else ""))
    return 0
