"""`tower notify test`: try the notification targets."""

from __future__ import annotations

import click

from tower.cli.common import Group, LazyChoice, config, json_option, local_only, print_json


def events() -> list[str]:
    from tower.management.notify import Event

    return [str(event) for event in Event]


@click.group(cls=Group)
def notify() -> None:
    """notifications: `notify test` sends one test notification to every webhook and mail
    recipient now (exit 1 if any failed)"""


@notify.command()
@click.option("--event", type=LazyChoice("EVENT", events), default="completed",
              show_default=True, help="the event to tell of")
@click.option("--production", help="tell this production's facts (default: made-up ones)")
@json_option
def test(event: str, production: str | None, as_json: bool) -> int:
    """send one test notification to every webhook and mail recipient now"""
    from tower.management.notify import Event, send_test

    local_only()
    deliveries = send_test(config(), Event(event), production)
    if as_json:
        print_json({"event": event, "deliveries": [
            {"target": d.target, "delivered": d.error is None, "error": d.error}
            for d in deliveries]})
    for delivery in [] if as_json else deliveries:
        print(f"delivered  {delivery.target}" if delivery.error is None
              else f"FAILED     {delivery.error}")
    return int(any(delivery.error is not None for delivery in deliveries))


COMMANDS = [notify]
