"""The RabbitMQ broker: a durable direct exchange and one durable queue per site queue.

Messages are persistent and published with publisher confirms, pipelined: a
batch goes out whole and the tower then waits for the broker's
acknowledgements, one round trip per batch rather than per message. A message
the broker returns (unroutable) or refuses fails the batch; its jobs stay
assigned and are published again, which is harmless because the claim decides.

The tower's loops are threads, and a pika connection is not thread-safe: one
lock serialises every use of the connection.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import pika
from pika import frame, spec
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import Field
from sqlalchemy import Engine

from pilots.amqp import (
    CONNECTION_ERRORS,
    URL_VARIABLE,
    connection_parameters,
    describe,
    queue_arguments,
)
from pilots.backoff import Backoff
from pilots.urls import redact
from sites.schema import Seconds, Strict, build
from tower.brokers.broker import Message, MessageKey, PilotSource
from tower.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

PERSISTENT = 2
#: Messages one discard looks at, at most (a queue holds a bounded backlog).
DISCARD_LIMIT = 10_000


class AmqpOptions(Strict):
    """`broker_options` of tower.yaml when the broker is RabbitMQ."""

    exchange: str = Field(default="gridtower", min_length=1, max_length=255)
    #: "quorum" replicates each queue over the cluster's nodes (RabbitMQ 3.8+).
    queue_type: Literal["classic", "quorum"] = "classic"
    #: Seconds to wait for the broker to confirm one batch.
    confirm_timeout: Seconds = Field(default=60, gt=0)
    #: TLS (amqps://): the authority that signed the broker's certificate; default: the system's.
    ca_file: str | None = None
    #: TLS client certificate and key, for brokers that authenticate by certificate.
    cert_file: str | None = None
    key_file: str | None = None


class AmqpBroker:
    """Implements `Broker` over RabbitMQ."""

    def __init__(self, url: str, engine: Engine, options: dict[str, Any], source: str) -> None:
        self.options = build(AmqpOptions, options, source, prefix="broker_options")
        self.url = url
        self.where = redact(url)
        try:
            self.parameters = connection_parameters(
                url, ca_file=self.options.ca_file, cert_file=self.options.cert_file,
                key_file=self.options.key_file)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{source}: broker: {exc}", field="broker") from None
        self.arguments = queue_arguments(self.options.queue_type)
        self._lock = threading.Lock()
        self._backoff = Backoff()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._confirms = _Confirms()

    def publish(self, queue: str, messages: list[Message]) -> None:
        if messages:
            self._use(lambda channel: self._publish(channel, queue, messages))

    def depth(self, queue: str) -> int | None:
        # a declare answers with the count of ready messages, and is idempotent
        return self._use(lambda channel: self._declare(channel, queue).method.message_count)

    def discard(self, queue: str, stale: Callable[[list[Message]], set[MessageKey]]) -> int:
        return self._use(lambda channel: self._discard(channel, queue, stale))

    def pilot_source(self, queue: str, url: str | None = None) -> PilotSource:
        options: dict[str, str] = {"queue_type": self.options.queue_type}
        if self.options.ca_file:
            options["ca_file"] = self.options.ca_file
        return PilotSource("amqp", queue, options, {URL_VARIABLE: url or self.url})

    def reach(self, timeout: float) -> None:
        parameters = connection_parameters(
            self.url, ca_file=self.options.ca_file, cert_file=self.options.cert_file,
            key_file=self.options.key_file, timeout=timeout)
        parameters.connection_attempts, parameters.stack_timeout = 1, timeout
        try:
            pika.BlockingConnection(parameters).close()
        except CONNECTION_ERRORS as exc:
            raise BackendError(f"broker {self.where}: {describe(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def _use(self, action: Callable[[BlockingChannel], T]) -> T:
        """Run `action` on a live channel; on a dropped connection reconnect and retry once."""
        with self._lock:
            for retry in (False, True):
                channel = self._connect()
                try:
                    return action(channel)
                except CONNECTION_ERRORS as exc:
                    self._disconnect()
                    problem = describe(exc)
                    if retry or not _dropped(exc):
                        self._backoff.failed()
                        raise BackendError(f"broker {self.where}: {problem}") from None
                    log.info("broker %s: %s; reconnecting", self.where, problem)
            raise AssertionError("unreachable")

    def _connect(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._disconnect()
        if not self._backoff.due():
            raise BackendError(f"broker {self.where}: unreachable for "
                               f"{self._backoff.outage():.0f}s; next try in "
                               f"{self._backoff.next_try - time.monotonic():.0f}s")
        try:
            self._connection = pika.BlockingConnection(self.parameters)
            self._channel = self._connection.channel()
            self._confirms.enable(self._channel)
            self._channel.exchange_declare(self.options.exchange, "direct", durable=True)
        except CONNECTION_ERRORS as exc:
            self._disconnect()
            delay = self._backoff.failed()
            raise BackendError(f"broker {self.where}: {describe(exc)}; "
                               f"next try in {delay:.0f}s") from None
        if self._backoff.since is not None:
            log.info("broker %s reachable again after %.0fs", self.where,
                     self._backoff.outage())
        self._backoff.succeeded()
        return self._channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except CONNECTION_ERRORS as exc:
                log.debug("closing broker connection: %s", describe(exc))

    def _declare(self, channel: BlockingChannel, queue: str) -> Any:
        answer = channel.queue_declare(queue, durable=True, arguments=self.arguments)
        if queue not in self._declared:
            channel.queue_bind(queue, self.options.exchange, routing_key=queue)
            self._declared.add(queue)
        return answer

    def _discard(self, channel: BlockingChannel, queue: str,
                 stale: Callable[[list[Message]], set[MessageKey]]) -> int:
        """Take every waiting message (unacknowledged, so a dropped connection returns
        them), acknowledge the stale ones and put the others back, where they were."""
        self._declare(channel, queue)
        taken: list[tuple[int, Any]] = []
        while len(taken) < DISCARD_LIMIT:
            method, _, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            taken.append((method.delivery_tag, _parsed(body)))
        doomed = stale([message for _, message in taken if message is not None])
        gone = 0
        for tag, message in taken:
            # a message no pilot could read goes too
            if message is None or (message["job"], message["attempt"]) in doomed:
                channel.basic_ack(tag)
                gone += 1
            else:
                channel.basic_nack(tag, requeue=True)
        return gone

    def _publish(self, channel: BlockingChannel, queue: str, messages: list[Message]) -> None:
        if queue not in self._declared:
            self._declare(channel, queue)
        assert self._connection is not None
        # the channel's own checks before its basic_publish: a closed channel raises a
        # connection error (reconnect), not a write into nothing
        channel._impl._raise_if_not_open()
        frames = _frames(channel.channel_number, self.options.exchange, queue,
                         [_body(message) for message in messages])
        batch = self._confirms.expect(len(messages))
        self._connection._impl._output_marshaled_frames([frames])
        deadline = time.monotonic() + self.options.confirm_timeout
        while not batch.settled():
            if time.monotonic() > deadline:
                # the channel's confirm count is now unknowable: start afresh
                self._disconnect()
                raise BackendError(f"broker {self.where}: no confirmation of {queue} within "
                                   f"{self.options.confirm_timeout:.0f}s")
            self._connection.process_data_events(time_limit=0.05)
        if batch.refused:
            raise BackendError(f"broker {self.where}: {batch.refused} of {len(messages)} "
                               f"messages to {queue} were not accepted")


class _Batch:
    """The delivery tags of one published batch, and what the broker said of them."""

    def __init__(self, first: int, last: int) -> None:
        self.pending = set(range(first, last + 1))
        self.low = first
        self.refused = 0

    def settle(self, tag: int, multiple: bool, accepted: bool) -> None:
        tags = [tag]
        if multiple:
            # every tag up to `tag`; `low` only grows, so this is linear over the batch
            tags = list(range(self.low, tag + 1))
            self.low = max(self.low, tag + 1)
        for each in tags:
            if each in self.pending:
                self.pending.discard(each)
                self.refused += 0 if accepted else 1

    def settled(self) -> bool:
        return not self.pending


class _Confirms:
    """Publisher confirms of one channel, pipelined.

    pika's BlockingChannel waits for the confirm of each message in turn (about
    1,100 messages/s on loopback, bench/broker.py); publishing on the underlying
    channel and listening for its confirms puts a whole batch in flight at once
    (about 10,000/s).
    """

    def __init__(self) -> None:
        self.published = 0
        self.batch: _Batch | None = None

    def enable(self, channel: BlockingChannel) -> None:
        self.published, self.batch = 0, None
        channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm)
        channel._impl.add_on_return_callback(self._on_return)

    def expect(self, count: int) -> _Batch:
        self.batch = _Batch(self.published + 1, self.published + count)
        self.published += count
        return self.batch

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if self.batch is not None:
            self.batch.settle(method.delivery_tag, method.multiple,
                              isinstance(method, pika.spec.Basic.Ack))

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # an unroutable message is returned, then acked: count it refused here
        log.warning("broker returned message %r: %s", body[:200], method.reply_text)
        if self.batch is not None:
            self.batch.refused += 1


#: Every message's properties: one header frame serves all bodies of a length.
PROPERTIES = pika.BasicProperties(delivery_mode=PERSISTENT, content_type="application/json")


def _body(message: Message) -> bytes:
    """A message as JSON, formatted directly (json.dumps costs several times more)."""
    return b'{"job": %d, "attempt": %d, "walltime": %d}' % (
        message["job"], message["attempt"], message["walltime"])


def _frames(channel: int, exchange: str, queue: str, bodies: list[bytes]) -> bytes:
    """The AMQP frames publishing each of `bodies` (persistent, mandatory) to `queue`, as
    one piece: pika's basic_publish marshals the same method and header frames anew for
    each message and sends each of its three frames with a system call of its own, a
    third of the loop's publishing time. Bodies are a few dozen bytes, one frame each."""
    publish = frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key=queue,
                                                       mandatory=True)).marshal()
    headers: dict[int, bytes] = {}
    parts: list[bytes] = []
    for body in bodies:
        header = headers.get(len(body))
        if header is None:
            header = headers[len(body)] = frame.Header(channel, len(body), PROPERTIES).marshal()
        parts += (publish, header, frame.Body(channel, body).marshal())
    return b"".join(parts)


def _parsed(body: bytes) -> Message | None:
    """A message's body as the tower wrote it, or None."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    ok = isinstance(message, dict) and isinstance(message.get("job"), int) \
        and isinstance(message.get("attempt"), int)
    return message if ok else None  # type: ignore[return-value]


def _dropped(exc: BaseException) -> bool:
    """Whether `exc` is a connection that went away (worth one reconnect), not a refusal."""
    return isinstance(exc, (pika.exceptions.AMQPConnectionError,
                            pika.exceptions.ConnectionWrongStateError,
                            pika.exceptions.ChannelWrongStateError, OSError))
