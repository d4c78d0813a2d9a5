"""Notifications of production events, delivered to a real HTTP server and a real SMTP server
on loopback, by a live tower on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import Session, select

from catalog.timeutil import utcnow
from tests.conftest import write_home
from tests.integration.conftest import LiveTower, toy_production
from tests.integration.test_failures import RETRY, flaky_production
from tower.cli import main as tower_main
from tower.config import load_config
from tower.errors import ConfigError
from tower.loops import daemon
from tower.management import notify, productions
from tower.model import tally
from tower.model.db import transaction
from tower.model.models import Notification
from tower.runtime import Runtime

pytestmark = pytest.mark.one_database

#: A secret in the webhook's URL and headers: it must reach the receiver, never a log.
TOKEN = "s3cret-t0ken"


class WebhookReceiver:
    """An HTTP server on loopback that records each POST and answers with the next status
    of `answers` (200 once they run out)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append((self.path, dict(self.headers), body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/gridtower?token={TOKEN}"

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The bodies of every request received, or of those telling `event`."""
        return [body for _, _, body in self.requests if event in (None, body["event"])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: keeps every mail it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on loopback: its mailbox and its port."""
    handler = Mailbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


def settings(webhook: WebhookReceiver, smtp_port: int | None = None,
             **extra: Any) -> dict[str, Any]:
    """The `notifications` section of tower.yaml for these receivers."""
    section: dict[str, Any] = {
        "webhooks": [{"url": webhook.url, "headers": {"Authorization": f"Bearer {TOKEN}"}}],
        "retry_delay": 1, **extra}
    if smtp_port is not None:
        section["smtp"] = {"host": "127.0.0.1", "port": smtp_port,
                           "sender": "gridtower@example.org",
                           "recipients": ["manager@example.org", "deputy@example.org"]}
    return section


def set_state(tower: LiveTower, name: str, state: str) -> None:
    with transaction(tower.runtime.engine) as session:
        production = productions.get(session, name)
        production.state = state  # type: ignore[assignment]
        session.add(production)


def notifications(tower: LiveTower) -> list[Notification]:
    with Session(tower.runtime.engine) as session:
        return list(session.exec(select(Notification)).all())


def cycles(tower: LiveTower, count: int) -> None:
    """Every loop of the tower, `count` times."""
    for _ in range(count):
        daemon.run_cycle(tower.runtime)


def until(condition: Callable[[], bool], step: Callable[[], Any], timeout: float = 20) -> None:
    """Run `step` until `condition` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        step()
        time.sleep(0.1)


# -- completed ----------------------------------------------------------------------------------

def test_a_completed_production_is_told_once_by_webhook_and_mail(
        live_tower: Callable[..., LiveTower], tmp_path: Path, webhook: WebhookReceiver,
        mailbox: tuple[Mailbox, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tower")
    mail, port = mailbox
    tower = live_tower(notifications=settings(webhook, port))
    tower.submit(toy_production(tmp_path, jobs=3, events=100))

    tower.drive(lambda: tower.all_ended() and bool(webhook.events()) and bool(mail.messages),
                timeout=120)
    cycles(tower, 5)  # the notifier runs on and on: nothing more is sent

    [told] = webhook.events()
    assert told["event"] == "completed" and told["production"] == "toy"
    assert (told["state"], told["jobs"]) == ("finished", {"done": 3})
    assert (told["events_done"], told["events_total"]) == (300, 300)
    assert (told["failed_attempts"], told["ended_attempts"]) == (0, 3)
    assert told["url"] == f"{tower.runtime.config.api_url}/productions/toy"
    path, headers, _ = webhook.requests[0]
    assert path == f"/hooks/gridtower?token={TOKEN}"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    [message] = mail.messages
    assert message["Subject"] == "[gridtower] production toy completed"
    assert message["To"] == "manager@example.org, deputy@example.org"
    text = message.get_content()
    assert "300 of 300 done" in text and told["url"] in text
    assert {row.state for row in notifications(tower)} == {"sent"}
    # the logs name the webhook by scheme and host alone
    assert "sent to webhook http://127.0.0.1:" in caplog.text
    assert TOKEN not in caplog.text and "/hooks/" not in caplog.text

    # extended, it completes anew, and is told once more
    with transaction(tower.runtime.engine) as session:
        productions.extend(session, "toy", 400)
    tower.drive(lambda: tower.all_ended() and len(webhook.events()) == 2
                and len(mail.messages) == 2, timeout=120)
    cycles(tower, 3)
    assert [(body["events_done"], body["events_total"]) for body in webhook.events()] == [
        (300, 300), (400, 400)]
    assert len(mail.messages) == 2


# -- failing ------------------------------------------------------------------------------------

def test_a_failing_production_is_told_once_past_the_minimum_of_attempts(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        webhook: WebhookReceiver) -> None:
    tower = live_tower(retry=RETRY, notifications=settings(
        webhook, failure_threshold=0.5, failure_min_attempts=6))
    # every attempt exits 75: three attempts per job under the standard policy
    tower.submit(flaky_production(tmp_path, jobs=4, fail_share=1.0))
    tower.drive(lambda: tower.all_ended() and bool(webhook.events("failing"))
                and bool(webhook.events("completed")), timeout=120)
    cycles(tower, 3)

    [told] = webhook.events("failing")
    # what was told is what the notifier saw when it decided: never before six ended
    assert told["ended_attempts"] >= 6
    assert told["failed_attempts"] == told["ended_attempts"]
    assert told["production"] == "flaky"
    # all its jobs failed: it completed, too
    assert len(webhook.events("completed")) == 1


@pytest.mark.parametrize(("outcomes", "failing"), [
    ({"exit_code": 19}, False),                                 # below the minimum of 20
    ({"exit_code": 20}, True),
    ({"exit_code": 4, "success": 16}, False),                   # 20%, below a quarter
    ({"exit_code": 3, "lost_heartbeat": 2, "success": 15}, True),  # a quarter, of any kind
    ({"exit_code": 5, "cancelled": 10, "success": 10}, False),  # cancelled is not a failure
])
def test_failing_needs_the_threshold_and_the_minimum_of_ended_attempts(
        live_tower: Callable[..., LiveTower], tmp_path: Path, webhook: WebhookReceiver,
        outcomes: dict[str, int], failing: bool) -> None:
    tower = live_tower(notifications=settings(webhook))
    tower.submit(toy_production(tmp_path, jobs=2))
    with transaction(tower.runtime.engine) as session:
        production = productions.get(session, "toy")
        for outcome, count in outcomes.items():
            for _ in range(count):
                tally.attempt_ended(session, production.id or 0, "local", outcome,
                                    3 if outcome == "exit_code" else 0, 100, utcnow())

    notify.detect(tower.runtime)
    assert [row.event for row in notifications(tower)] == (["failing"] if failing else [])


# -- awaiting approval --------------------------------------------------------------------------

def test_a_production_waiting_for_approval_is_told_once_per_state(
        live_tower: Callable[..., LiveTower], tmp_path: Path,
        webhook: WebhookReceiver) -> None:
    tower = live_tower(notifications=settings(webhook))
    tower.submit(toy_production(tmp_path, jobs=2))
    notify.run_once(tower.runtime)
    assert webhook.events() == []  # active, jobs waiting: nothing to tell

    set_state(tower, "toy", "requested")
    for _ in range(3):
        notify.run_once(tower.runtime)
    set_state(tower, "toy", "approval")
    for _ in range(3):
        notify.run_once(tower.runtime)

    assert [(body["event"], body["state"]) for body in webhook.events()] == [
        ("awaiting_approval", "requested"), ("awaiting_approval", "approval")]
    assert webhook.events()[1]["jobs"] == {"defined": 2}


def test_two_towers_send_an_event_once(live_tower: Callable[..., LiveTower], tmp_path: Path,
                                       webhook: WebhookReceiver) -> None:
    tower = live_tower(notifications=settings(webhook))
    tower.submit(toy_production(tmp_path, jobs=2))
    set_state(tower, "toy", "approval")
    other = Runtime.open(tower.runtime.config)
    try:
        threads = [threading.Thread(target=lambda runtime=runtime: [
            notify.run_once(runtime) for _ in range(5)]) for runtime in (tower.runtime, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        other.close()
    assert len(webhook.events("awaiting_approval")) == 1


# -- retries ------------------------------------------------------------------------------------

def test_a_refused_delivery_is_retried_and_delivered_once(
        live_tower: Callable[..., LiveTower], tmp_path: Path, webhook: WebhookReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tower")
    webhook.answers = [500]
    tower = live_tower(notifications=settings(webhook))
    tower.submit(toy_production(tmp_path, jobs=2))
    set_state(tower, "toy", "approval")

    assert notify.run_once(tower.runtime) == {"events": 1, "sent": 0, "failed": 1}
    [row] = notifications(tower)
    assert (row.state, row.tries, row.next_try_at is not None) == ("pending", 1, True)
    assert row.last_error and "answered 500" in row.last_error and TOKEN not in row.last_error
    assert notify.run_once(tower.runtime)["sent"] == 0  # not before its delay

    until(lambda: notifications(tower)[0].state == "sent",
          lambda: notify.run_once(tower.runtime))
    for _ in range(3):
        notify.run_once(tower.runtime)
    assert len(webhook.requests) == 2  # the refused one, then the delivery
    assert notifications(tower)[0].tries == 2
    assert "retry in 1s" in caplog.text and TOKEN not in caplog.text


def test_a_delivery_is_given_up_after_its_last_try(live_tower: Callable[..., LiveTower],
                                                  tmp_path: Path,
                                                  webhook: WebhookReceiver) -> None:
    webhook.answers = [503] * 10
    tower = live_tower(notifications=settings(webhook, max_tries=2))
    tower.submit(toy_production(tmp_path, jobs=2))
    set_state(tower, "toy", "approval")

    until(lambda: [row.state for row in notifications(tower)] == ["failed"],
          lambda: notify.run_once(tower.runtime))
    notify.run_once(tower.runtime)
    assert len(webhook.requests) == 2
    assert "answered 503" in (notifications(tower)[0].last_error or "")


# -- `tower notify test` ------------------------------------------------------------------------

def test_notify_test_sends_to_every_target_and_says_which_failed(
        tmp_path: Path, webhook: WebhookReceiver, mailbox: tuple[Mailbox, int],
        capsys: pytest.CaptureFixture[str]) -> None:
    mail, port = mailbox
    section = settings(webhook, port)
    section["webhooks"].append({"url": f"http://127.0.0.1:{free_port()}/closed"})
    path = write_home(tmp_path, f"sqlite:///{tmp_path / 'tower.db'}", notifications=section)

    code = tower_main(["--config", str(path), "notify", "test", "--event", "failing", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(row["target"].split(":")[0], row["delivered"]) for row in answer["deliveries"]] == [
        ("webhook http", True), ("webhook http", False), ("smtp 127.0.0.1", True)]
    assert "cannot connect" in answer["deliveries"][1]["error"]
    [told] = webhook.events()
    assert (told["event"], told["test"]) == ("failing", True)
    assert mail.messages[0]["Subject"] == "[gridtower] production example is failing (test)"
    assert tower_main(["--config", str(path), "notify", "test", "--production", "nope"]) == 3


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "message"), [
    ({"webhooks": [{"url": "ftp://hooks.example.org/x"}]},
     "notifications.webhooks.0.url: expected an http:// or https:// URL"),
    ({"webhooks": [{"url": "https://user:pw@hooks.example.org/x"}]},
     "notifications.webhooks.0.url: credentials do not belong in the URL"),
    ({"webhooks": [{"url": "https://hooks.example.org/x", "events": ["finished"]}]},
     "notifications.webhooks.0.events.0: Input should be 'completed'"),
    ({"smtp": {"host": "mail", "sender": "a@example.org", "recipients": []}},
     "notifications.smtp.recipients: List should have at least 1 item"),
    ({"smtp": {"host": "mail", "sender": "a@example.org", "recipients": ["b@example.org"],
               "username": "bot", "password_file": "pw"}},
     "notifications.smtp.password_file: a password must not travel in clear"),
    ({"failure_threshold": 1.5}, "notifications.failure_threshold: Input should be less"),
])
def test_bad_notification_settings_are_refused_naming_the_key(
        tmp_path: Path, section: dict[str, Any], message: str) -> None:
    path = write_home(tmp_path, "sqlite:///x.db", notifications=section)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {message}" in str(caught.value)


@pytest.mark.parametrize(("mode", "refused"), [(0o644, True), (0o640, True), (0o600, False)])
def test_the_smtp_password_file_must_be_private(tmp_path: Path, mode: int,
                                                refused: bool) -> None:
    password = tmp_path / "smtp-password"
    password.write_text("hunter2\n")
    password.chmod(mode)
    path = write_home(tmp_path, "sqlite:///x.db", notifications={"smtp": {
        "host": "mail.example.org", "port": 587, "starttls": True, "username": "bot",
        "password_file": "smtp-password", "sender": "gridtower@example.org",
        "recipients": ["manager@example.org"]}})
    if refused:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert "notifications.smtp.password_file" in str(caught.value)
        assert "chmod 600" in str(caught.value) and "hunter2" not in str(caught.value)
        assert caught.value.field == "notifications.smtp.password_file"
    else:
        smtp = load_config(path).notifications.smtp
        assert smtp is not None and smtp.password_file == password  # relative to tower.yaml


def test_no_notifications_are_recorded_without_a_target(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower()
    tower.submit(toy_production(tmp_path, jobs=2))
    set_state(tower, "toy", "approval")
    assert notify.run_once(tower.runtime) == {"events": 0, "sent": 0, "failed": 0}
    assert notifications(tower) == []
