"""RabbitMQ as a pilot's message source, and the connection settings the tower shares.

The pilot consumes its site queue with a prefetch equal to the jobs it may hold
claimed (its payload slots, and a few ahead while payloads are short), so the
next messages are at hand when payloads end (short jobs would otherwise wait
a broker round trip and a new consumer each). A message it holds while every
slot is busy goes back to the queue after HOLD seconds, and the pilot stops
consuming until a slot frees: with long jobs no message waits at a full pilot
while another has room. It acknowledges each message right after the tower
answered the claim, never for the length of a payload (RabbitMQ closes
consumers that hold a delivery past its consumer_timeout).

When the broker goes away the source reconnects with backoff, declares its
queue again and resumes. Deliveries it held return to the queue with the
connection; a message delivered twice is harmless, because the claim decides.
Past the pilot's patience it raises SourceLost, and the pilot drains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pika.exceptions import AMQPError

from pilots.backoff import Backoff
from pilots.client import TowerClient
from pilots.sources import SourceLost
from pilots.urls import redact

log = logging.getLogger(__name__)

#: The environment variable that carries the broker URL (with its password) to a pilot;
#: the environment, unlike the command line, is not readable by other users.
URL_VARIABLE = "GRIDTOWER_BROKER_URL"

#: Options a pilot's amqp source accepts (`--source-option KEY=VALUE`).
OPTIONS = ("queue_type", "ca_file", "cert_file", "key_file")

#: Seconds between AMQP heartbeats when the URL does not say.
HEARTBEAT = 30

#: Seconds a full pilot holds messages before it gives them back.
HOLD = 2.0
#: Errors that mean the connection or channel is gone.
#: What a connection that fails raises; a broker that accepts the connection but never
#: answers the handshake ends in pika's AMQPConnectorStackTimeout, no AMQPError.
CONNECTION_ERRORS = (AMQPError, OSError, AMQPConnectorException)


def connection_parameters(url: str, *, ca_file: str | None = None,
                          cert_file: str | None = None, key_file: str | None = None,
                          timeout: float = 10.0) -> pika.URLParameters:
    """pika's parameters for `url` (amqp:// or amqps://); raises ValueError naming the problem.

    TLS verifies the broker's certificate and host name, against `ca_file` or the
    system's authorities; `cert_file`/`key_file` add a client certificate.
    """
    try:
        parameters = pika.URLParameters(url)
    except ValueError as exc:
        raise ValueError(f"broker URL {redact(url)}: {exc}") from None
    query = parse_qs(urlsplit(url).query)
    if "heartbeat" not in query:
        parameters.heartbeat = HEARTBEAT
    if "socket_timeout" not in query:
        parameters.socket_timeout = timeout
    if "blocked_connection_timeout" not in query:
        parameters.blocked_connection_timeout = timeout
    if url.startswith("amqps://") and "ssl_options" not in query:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parameters.host)
    return parameters


def queue_arguments(queue_type: str) -> dict[str, Any]:
    """The declare arguments of a site queue; tower and pilots must declare it alike."""
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"queue_type: expected 'classic' or 'quorum', got {queue_type!r}")
    # a classic queue is declared without the argument, as queues made by other tools are
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class AmqpSource:
    """Implements `Source` over one RabbitMQ queue."""

    def __init__(self, client: TowerClient, queue: str, options: dict[str, str],
                 patience: float) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"source option {unknown[0]!r}: unknown "
                             f"(known: {', '.join(OPTIONS)})")
        url = os.environ.get(URL_VARIABLE)
        if not url:
            raise ValueError(f"the amqp source needs the broker URL in ${URL_VARIABLE}")
        self.parameters = connection_parameters(
            url, ca_file=options.get("ca_file"), cert_file=options.get("cert_file"),
            key_file=options.get("key_file"))
        self.where = f"{redact(url)} queue {queue}"
        self.queue = queue
        self.arguments = queue_arguments(options.get("queue_type", "classic"))
        self.patience = patience
        self.backoff = Backoff()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer: str | None = None
        #: The most jobs the pilot asked for at once (its slots, and the jobs it claims ahead
        #: while payloads are short): the prefetch.
        self._capacity = 0
        #: Free slots at the last call: whether a delivery is worth waking the pilot for.
        self._wanted = 0
        #: Delivered and not yet handed to the pilot, and since when it holds them.
        self._waiting: list[dict[str, Any]] = []
        self._holding_since: float | None = None
        #: Delivery tags belong to one channel: counts channels, so stale tags are never acked.
        self._generation = 0
        self._closed = False
        self._interrupted = threading.Event()

    def get(self, limit: int) -> list[dict[str, Any]]:
        if self._closed or (self._channel is None and not self._connect()):
            return []
        try:
            grown = limit > self._capacity
            self._capacity, self._wanted = max(self._capacity, limit), limit
            if limit > 0 and (self._consumer is None or grown):
                # RabbitMQ applies a prefetch to consumers made after it: a larger one needs
                # a new consumer (what this one holds goes back first)
                self._stop_consuming()
                self._subscribe(self._capacity)
            assert self._connection is not None
            # dispatches deliveries to _on_message and answers the broker's heartbeats
            self._connection.process_data_events(time_limit=0)
            if limit == 0 and self._held_too_long():
                self._stop_consuming()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return []
        taken, self._waiting = self._waiting[:limit], self._waiting[limit:]
        self._holding_since = (self._holding_since or time.monotonic()) if self._waiting \
            else None
        return taken

    def _held_too_long(self) -> bool:
        return self._holding_since is not None and \
            time.monotonic() - self._holding_since > HOLD

    def ack(self, messages: list[dict[str, Any]]) -> None:
        try:
            self._settle(messages, ack=True)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)

    def release(self, messages: list[dict[str, Any]]) -> None:
        try:
            self._settle(messages, ack=False)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)

    def wait(self, timeout: float) -> None:
        if self._waiting and self._wanted:
            return
        connection = self._connection
        if connection is None or self._consumer is None or self._interrupted.is_set():
            self._interrupted.wait(timeout)
        else:
            try:
                # returns at the first delivery, or at an interrupt's callback
                connection.process_data_events(time_limit=timeout)
            except CONNECTION_ERRORS as exc:
                self._lost(exc)
        self._interrupted.clear()

    def interrupt(self) -> None:
        if self._interrupted.is_set():
            # the loop has not woken for the last interrupt yet (it clears the flag as it
            # wakes, before it looks at what ended): it sees this one too, at no cost
            return
        self._interrupted.set()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.add_callback_threadsafe(lambda: None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            try:
                self._stop_consuming()
                assert self._connection is not None
                self._connection.close()
            except CONNECTION_ERRORS as exc:
                log.debug("closing %s: %s", self.where, describe(exc))
        self._forget()

    def _connect(self) -> bool:
        if not self.backoff.due():
            self._check_patience()
            return False
        try:
            connection = pika.BlockingConnection(self.parameters)
            channel = connection.channel()
            # the queue may not exist yet, or the broker lost it: declaring is idempotent
            channel.queue_declare(self.queue, durable=True, arguments=self.arguments)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return False
        if self.backoff.since is not None:
            log.info("broker %s reachable again after %.0fs", self.where, self.backoff.outage())
        self.backoff.succeeded()
        self._connection, self._channel = connection, channel
        self._generation += 1
        return True

    def _subscribe(self, prefetch: int) -> None:
        assert self._channel is not None
        self._channel.basic_qos(prefetch_count=prefetch)
        self._consumer = self._channel.basic_consume(self.queue, self._on_message)

    def _stop_consuming(self) -> None:
        if self._consumer is not None:
            assert self._channel is not None
            # pika requeues deliveries not yet dispatched; those we hold go back here
            self._channel.basic_cancel(self._consumer)
            self._consumer = None
        waiting, self._waiting, self._holding_since = self._waiting, [], None
        self._settle(waiting, ack=False)

    def _on_message(self, channel: BlockingChannel, method: Any, properties: Any,
                    body: bytes) -> None:
        try:
            data = json.loads(body)
            message: dict[str, Any] = {"job": int(data["job"]), "attempt": int(data["attempt"]),
                                       "walltime": float(data["walltime"])}
        except (ValueError, KeyError, TypeError):
            log.error("%s: dropping a malformed message: %r", self.where, body[:200])
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        message["id"] = f"{self._generation}:{method.delivery_tag}"
        self._waiting.append(message)

    def _settle(self, messages: list[dict[str, Any]], ack: bool) -> None:
        """Acknowledge, or give back to the queue, messages of the current channel.

        Acknowledged at once, with one `multiple` ack of the latest: the pilot settles what
        it took (claimed, or given back) before it takes more, and takes deliveries in
        their order, so every earlier delivery of the channel is settled already."""
        if self._channel is None:
            return  # their channel is gone and the broker requeued them already
        tags = []
        for message in messages:
            generation, _, tag = str(message["id"]).partition(":")
            if int(generation) == self._generation:
                tags.append(int(tag))
        if ack and tags:
            self._channel.basic_ack(max(tags), multiple=True)
        for number in [] if ack else tags:
            self._channel.basic_nack(number, requeue=True)

    def _lost(self, exc: BaseException) -> None:
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):  # already gone; closing is a courtesy
                self._connection.close()
        self._forget()
        delay = self.backoff.failed()
        log.warning("broker %s: %s; reconnecting in %.1fs", self.where, describe(exc), delay)
        self._check_patience()

    def _forget(self) -> None:
        self._connection = self._channel = self._consumer = None
        self._waiting, self._holding_since = [], None

    def _check_patience(self) -> None:
        if self.backoff.outage() > self.patience:
            raise SourceLost(f"the broker at {self.where} has been unreachable for "
                             f"{self.backoff.outage():.0f}s")
