"""Notifications of production events, by webhook and by e-mail.

A production manager hears when a production completes, when too many of its attempts
fail, or when it waits for approval, without watching pages. Each cycle the notifier
reads every production's kept counts (the tally, never the jobs table) and records each
event it has not recorded yet, one row per target; the row's unique key (production,
event, occurrence, target) makes a second tower's insert of the same event a no-op.
Then it delivers what is due, one row claimed at a time and outside any transaction,
retrying a failed delivery with a growing delay up to `max_tries`.

Secrets stay out of logs and of the database: a webhook is named by its scheme and host
alone (its path, query string and headers may hold tokens), and the SMTP password is read
from its file at each delivery.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from catalog.timeutil import later, utcnow
from tower.errors import BackendError, ConfigError
from tower.management import chains, progress
from tower.management.notification_settings import (
    MAX_TIMEOUT,
    Event,
    Smtp,
    Target,
    Webhook,
)
from tower.model import tally
from tower.model.db import create_schema, insert_missing, make_engine, transaction
from tower.model.models import Notification, Production
from tower.model.states import ProductionState

if TYPE_CHECKING:
    from tower.config import TowerConfig
    from tower.runtime import Runtime

log = logging.getLogger(__name__)


#: Production states in which a manager's approval is awaited: a collaborator's request,
#: and a production whose trial ended.
AWAITING = frozenset({ProductionState.REQUESTED, ProductionState.APPROVAL})
#: Production states in which attempts may still end (a paused one's running jobs go on).
ATTEMPTING = frozenset({ProductionState.TRIAL, ProductionState.ACTIVE, ProductionState.PAUSED})
#: The occurrence of `failing`: a production is told failing once, whatever follows.
ONCE = "once"

#: The lease of a notification being delivered: far longer than one delivery may take
#: (MAX_TIMEOUT), so only a dead tower's lease expires.
LEASE = 5 * MAX_TIMEOUT
#: The longest delay between two tries of a delivery.
MAX_DELAY = 3600
#: Notifications one cycle delivers at most.
BATCH = 50


class DeliveryError(BackendError):
    """A notification could not be delivered."""


# -- the loop -----------------------------------------------------------------------------------

def run_once(runtime: Runtime) -> dict[str, int]:
    """Record new events, then deliver what is due: how many events were new, and how many
    deliveries were made and failed this cycle."""
    settings = runtime.config.notifications
    if not settings.targets():
        return {"events": 0, "sent": 0, "failed": 0}
    events = detect(runtime)
    sent, failed = deliver_due(runtime)
    return {"events": events, "sent": sent, "failed": failed}


def detect(runtime: Runtime) -> int:
    """Record each production event not recorded yet, one row per target that wants it;
    returns the number of new events. Reads without a write lock; writes only when there
    is something new."""
    # tower.management.productions imports tower.config, which imports this module's settings
    from tower.management import productions

    config = runtime.config
    wanted: dict[Event, list[str]] = {}
    for target in config.notifications.targets():
        for event in target.events:
            wanted.setdefault(event, []).append(target.key)
    with Session(runtime.engine) as session:
        known = set(session.exec(select(Notification.production_id, Notification.event,
                                        Notification.occurrence).distinct()).all())
        counts = productions.state_counts(session)
        found: list[tuple[int, Event, str, dict[str, Any]]] = []
        for production in productions.all_productions(session):
            states = counts.get(production.id or 0, {})
            for event, occurrence in _new_events(session, config, production, states, known,
                                                 wanted):
                found.append((production.id or 0, event, occurrence,
                              facts(session, config, production, states, event)))
    if found:
        with transaction(runtime.engine) as session:
            for production_id, event, occurrence, payload in found:
                for key in wanted[event]:
                    insert_missing(session, Notification, production_id=production_id,
                                   event=event, occurrence=occurrence, target=key,
                                   payload=payload)
    for _, event, _, payload in found:
        log.info("production=%s event=%s recorded", payload["production"], event)
    return len(found)


def _new_events(session: Session, config: TowerConfig, production: Production,
                states: dict[str, int], known: set[tuple[int, str, str]],
                wanted: dict[Event, list[str]]) -> list[tuple[Event, str]]:
    """The events of `production` (with their occurrence) that a target wants and that
    were not recorded yet."""
    phase = progress.phase(production.state, states)
    if (phase == "finished" and chains.is_split(production.spec)
            and not chains.fed(session, production)):
        phase = str(production.state)  # a chain's step whose next files are still to come
    candidates = []
    if phase == "finished":
        # an extended production completes anew: its total of events tells the two apart
        candidates.append((Event.COMPLETED, str(production.events_total)))
    if production.state in AWAITING:
        candidates.append((Event.AWAITING_APPROVAL, str(production.state)))
    new = [(event, occurrence) for event, occurrence in candidates
           if event in wanted and (production.id, event, occurrence) not in known]
    # a finished production's attempts no longer change: it is looked at once more, in the
    # cycle that sees it complete, so a long tower's old productions cost nothing
    if (Event.FAILING in wanted and (production.id, Event.FAILING, ONCE) not in known
            and production.state in ATTEMPTING
            and (phase != "finished" or (Event.COMPLETED, str(production.events_total)) in new)
            and _failing(attempts(session, production.id or 0), config)):
        new.append((Event.FAILING, ONCE))
    return new


def attempts(session: Session, production_id: int) -> tuple[int, int]:
    """(failed, ended) attempts of a production, from the activity tally."""
    failed = ended = 0
    for (_, _, kind, _), count in tally.totals(session, production_id=production_id).items():
        if kind == tally.DONE:  # a job done, not an attempt
            continue
        ended += count
        if kind not in progress.NOT_FAILED:
            failed += count
    return failed, ended


def _failing(counted: tuple[int, int], config: TowerConfig) -> bool:
    failed, ended = counted
    settings = config.notifications
    return ended >= settings.failure_min_attempts and failed / ended >= settings.failure_threshold


def facts(session: Session, config: TowerConfig, production: Production,
          states: dict[str, int], event: Event) -> dict[str, Any]:
    """What a notification tells: the webhook's JSON body, and the mail's lines."""
    failed, ended = attempts(session, production.id or 0)
    done = tally.counts(session, production.id).get(production.id or 0, {}).get("done")
    return {
        "event": str(event), "production": production.name,
        "state": progress.phase(production.state, states), "jobs": dict(states),
        "events_done": done.events if done else 0, "events_total": production.events_total,
        "failed_attempts": failed, "ended_attempts": ended,
        "url": f"{config.api_url}/productions/{quote(production.name)}",
        "at": utcnow().isoformat(timespec="seconds"),
    }


# -- delivery -----------------------------------------------------------------------------------

def deliver_due(runtime: Runtime) -> tuple[int, int]:
    """Deliver the notifications due, each claimed first so that only one tower sends it;
    returns (sent, failed)."""
    now = utcnow()
    with Session(runtime.engine) as session:
        due = session.exec(select(Notification.id).where(
            Notification.state == "pending",
            or_(col(Notification.next_try_at).is_(None), col(Notification.next_try_at) <= now),
            or_(col(Notification.lease_until).is_(None), col(Notification.lease_until) < now))
            .order_by(col(Notification.id)).limit(BATCH)).all()
    targets = {target.key: target for target in runtime.config.notifications.targets()}
    sent = failed = 0
    for notification_id in due:
        notification = _claim(runtime, notification_id)
        if notification is None:  # another tower took it
            continue
        try:
            target = targets.get(notification.target)
            if target is None:
                raise DeliveryError("its target is no longer configured")
            deliver(target, notification.payload)
        except DeliveryError as exc:
            _try_later(runtime, notification, exc)
            failed += 1
        else:
            _finish(runtime, notification, state="sent", sent_at=utcnow())
            log.info("production=%s event=%s sent to %s", notification.payload["production"],
                     notification.event, target.name)
            sent += 1
    return sent, failed


def _claim(runtime: Runtime, notification_id: int | None) -> Notification | None:
    now = utcnow()
    with transaction(runtime.engine) as session:
        return session.scalars(update(Notification).where(
            col(Notification.id) == notification_id, col(Notification.state) == "pending",
            or_(col(Notification.lease_until).is_(None), col(Notification.lease_until) < now))
            .values(lease_until=later(LEASE), lease_owner=runtime.instance)
            .returning(Notification)).first()


def _try_later(runtime: Runtime, notification: Notification, error: DeliveryError) -> None:
    settings = runtime.config.notifications
    if notification.tries + 1 >= settings.max_tries:
        log.error("production=%s event=%s target=%s given up after %s tries: %s",
                  notification.payload["production"], notification.event, notification.target,
                  notification.tries + 1, error)
        _finish(runtime, notification, state="failed", last_error=str(error)[:500])
        return
    delay = min(settings.retry_delay * 2 ** notification.tries, MAX_DELAY)
    log.warning("production=%s event=%s target=%s not delivered, retry in %ss: %s",
                notification.payload["production"], notification.event, notification.target,
                delay, error)
    _finish(runtime, notification, next_try_at=later(delay), last_error=str(error)[:500])


def _finish(runtime: Runtime, notification: Notification, **values: Any) -> None:
    """One try over: the lease released, the try counted, `values` set."""
    with transaction(runtime.engine) as session:
        session.execute(update(Notification).where(col(Notification.id) == notification.id)
                        .values(tries=Notification.tries + 1, lease_until=None,
                                lease_owner=None, **values)
                        .execution_options(synchronize_session=False))


def deliver(target: Target, payload: dict[str, Any]) -> None:
    """Send `payload` to one target now; raises DeliveryError saying why not."""
    if isinstance(target, Webhook):
        _post(target, payload)
    else:
        _mail(target, payload)


def _post(webhook: Webhook, payload: dict[str, Any]) -> None:
    # the foreign errors' texts hold the whole URL, query string included: they are not
    # chained, and only their kind is told. requests is imported here, where a webhook is
    # called: the loops and the API import this module, and most towers post nothing
    import requests

    try:
        answer = requests.post(webhook.url, json=payload, headers=webhook.headers,
                               timeout=webhook.timeout, allow_redirects=False)
    except requests.Timeout:
        raise DeliveryError(f"{webhook.name}: no answer within {webhook.timeout}s") from None
    except requests.exceptions.SSLError:
        raise DeliveryError(f"{webhook.name}: TLS failed (is the server's certificate "
                            "trusted?)") from None
    except requests.ConnectionError:
        raise DeliveryError(f"{webhook.name}: cannot connect") from None
    except requests.RequestException as exc:
        raise DeliveryError(f"{webhook.name}: {type(exc).__name__}") from None
    if not 200 <= answer.status_code < 300:  # a redirect is not a delivery either
        raise DeliveryError(f"{webhook.name}: answered {answer.status_code} {answer.reason}")


def _mail(smtp: Smtp, payload: dict[str, Any]) -> None:
    message = EmailMessage()
    message["Subject"] = subject(payload)
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.recipients)
    message["Date"] = formatdate()
    message.set_content(body(payload))
    context = ssl.create_default_context()
    try:
        client = (smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
                  if smtp.ssl else smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout))
        with client:
            if smtp.starttls:
                client.starttls(context=context)
            if smtp.username is not None and smtp.password_file is not None:
                client.login(smtp.username, smtp.password_file.read_text().rstrip("\r\n"))
            client.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:  # neither text holds the password
        raise DeliveryError(f"{smtp.name}: {exc}") from exc


#: What each event says of a production, in a mail's subject.
SAYS = {Event.COMPLETED: "completed", Event.FAILING: "is failing",
        Event.AWAITING_APPROVAL: "awaits approval"}


def subject(payload: dict[str, Any]) -> str:
    test = " (test)" if payload.get("test") else ""
    return f"[gridtower] production {payload['production']} {SAYS[payload['event']]}{test}"


def body(payload: dict[str, Any]) -> str:
    jobs = ", ".join(f"{state} {count}" for state, count in sorted(payload["jobs"].items()))
    return (f"Production {payload['production']} {SAYS[payload['event']]}.\n\n"
            f"state:     {payload['state']}\n"
            f"jobs:      {jobs or 'none'}\n"
            f"events:    {payload['events_done']} of {payload['events_total']} done\n"
            f"attempts:  {payload['failed_attempts']} of {payload['ended_attempts']} "
            f"ended attempts failed\n"
            f"page:      {payload['url']}\n"
            f"at:        {payload['at']}\n")


# -- `tower notify test` ------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    target: str
    error: str | None


def send_test(config: TowerConfig, event: Event, production: str | None = None
              ) -> list[Delivery]:
    """Send one notification of `event` to every target now, with the facts of
    `production` (else made-up ones), marked as a test; what each target made of it."""
    targets = config.notifications.targets()
    if not targets:
        raise ConfigError(f"{config.path}: notifications: no webhook and no smtp to notify",
                          field="notifications")
    payload = {**_test_facts(config, event, production), "test": True}
    deliveries = []
    for target in targets:
        try:
            deliver(target, payload)
            deliveries.append(Delivery(target.name, None))
        except DeliveryError as exc:
            deliveries.append(Delivery(target.name, str(exc)))
    return deliveries


def _test_facts(config: TowerConfig, event: Event, name: str | None) -> dict[str, Any]:
    if name is None:
        return {"event": str(event), "production": "example", "state": "active",
                "jobs": {"done": 1}, "events_done": 100, "events_total": 100,
                "failed_attempts": 0, "ended_attempts": 1,
                "url": f"{config.api_url}/productions/example",
                "at": utcnow().isoformat(timespec="seconds")}
    from tower.management import productions  # see detect()

    engine = make_engine(config.database_url)
    try:
        create_schema(engine)  # a tower that never ran: no such production, not a crash
        with Session(engine) as session:
            production = productions.get(session, name)
            states = productions.state_counts(session, production.id).get(production.id or 0,
                                                                           {})
            return facts(session, config, production, states, event)
    finally:
        engine.dispose()
