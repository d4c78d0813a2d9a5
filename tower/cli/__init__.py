"""`tower`: the production manager's command, one module per noun group.

    productions  submit, import, status, show, clone, extend, pause, resume, cancel,
                 watch, failures, retry
    requests     requests, approve, reject
    jobs         jobs, job, held, hold, release, why
    sites        sites [list|check|explain]        pilots    pilots
    catalog      catalog ls|find|export|verify    policy    policy list|show|check|simulate
    rerun        rerun --here|--site NAME LFN, rerun --here|--site NAME --sample N DATASET
    ca           ca init|issue|revoke|crl|list     notify    notify test
    daemon       init, run, serve                  db        db check; database errors in one line
    report       report (a production's summary plots and a one-page summary)
    common       global options, remote-or-local data, JSON and table output

Modules here import only click and the standard library at the top; each command imports
what it needs (SQLAlchemy, the models, requests) when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from tower.cli import (
    ca,
    catalog,
    common,
    daemon,
    db,
    jobs,
    notify,
    pilots,
    policy,
    productions,
    report,
    requests,
    rerun,
    sites,
)

EPILOG = """Exit codes: 0 success, 1 failure (a database or other backend that fails
included), 2 invalid input or configuration, 3 not found, 4 conflict (a state that forbids
the action), 5 refused by a remote tower, 6 the database's schema revision is not this
gridtower's (`tower db upgrade`), 130 interrupted; a closed output pipe
(`tower jobs | head`) ends it quietly with 1."""


@click.group(cls=common.Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EPILOG)
@click.option("--config", envvar="TOWER_CONFIG", show_envvar=True, metavar="FILE",
              help="path of tower.yaml (else $TOWER_HOME/tower.yaml)")
@click.option("-v", "--verbose", is_flag=True, help="log debug messages; show tracebacks")
@click.option("--url", envvar="TOWER_URL", show_envvar=True,
              help="work through this tower's API over HTTPS instead of beside its database, "
              "e.g. https://tower.example.org:8470")
@click.option("--cert", envvar="TOWER_CERT", show_envvar=True, help="your certificate (PEM)")
@click.option("--key", envvar="TOWER_KEY", show_envvar=True,
              help="its private key (PEM, mode 0600)")
@click.option("--ca", envvar="TOWER_CA", show_envvar=True,
              help="the CA bundle that signed the tower's certificate")
@click.option("--client-config", envvar="TOWER_CLIENT_CONFIG", show_envvar=True,
              metavar="FILE", help="a YAML file with url, cert, key and ca (else "
              "~/.gridtower/client.yaml when it exists)")
@click.pass_context
def cli(ctx: click.Context, **options: object) -> None:
    """gridtower's control tower: submit productions, follow their jobs, manage sites,
    pilots, the catalog, retry policies and certificates. Every command takes --json for
    scripts (reading commands all do)."""
    if ctx.obj is None:
        ctx.obj = common.State()
    for name, value in options.items():
        setattr(ctx.obj, name, value)
    logging.basicConfig(level=logging.DEBUG if ctx.obj.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # broker trouble is reported once by gridtower itself, without pika's tracebacks
    logging.getLogger("pika").setLevel(logging.CRITICAL)


for module in (productions, report, requests, jobs, sites, pilots, catalog, rerun, policy,
               notify, ca, db, daemon):
    for command in module.COMMANDS:
        cli.add_command(command)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion(shell: str) -> int:
    """print the shell completion script: `eval "$(tower completion bash)"` in ~/.bashrc,
    or the zsh one in ~/.zshrc"""
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # click ships both
    print(complete(cli, {}, "tower", "_TOWER_COMPLETE").source())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `tower` with `argv` (else the command line); the exit code."""
    from tower.errors import GridtowerError

    given = common.State()
    try:
        code = cli.main(args=argv, prog_name="tower", standalone_mode=False, obj=given)
        return int(code or 0)
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.ClickException as usage:
        usage.show()
        return usage.exit_code
    except (click.Abort, KeyboardInterrupt):
        return 130
    except GridtowerError as error:
        if given.json:
            print(json.dumps(error.as_dict()))
        print(f"tower: {error}", file=sys.stderr)
        return error.exit_code
    except SystemExit as done:  # click's own exit, as on a closed pipe
        return done.code if isinstance(done.code, int) else 1
    except Exception as error:
        problem = db.describe(error, given.database)
        if problem is None or given.verbose:
            raise
        print(f"tower: {problem}", file=sys.stderr)
        return 1
    finally:
        flush_quietly()


def flush_quietly() -> None:
    """The reader of our output left (`tower jobs | head`): click ends the command with
    exit 1 and no traceback; what is still buffered goes nowhere, quietly, rather than
    raise again when Python flushes stdout at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
