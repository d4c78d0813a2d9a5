"""The API's HTTP/1.1 front: one asyncio loop accepts connections, shakes TLS hands and
reads requests; only a complete request takes a thread, from a pool that runs the app.

A client that is slow or silent costs a coroutine and its buffers, never a thread: each
stage of a connection has a deadline for the whole stage (handshake, request head,
request body, writing the answer, waiting idle for the next request), heads and bodies
are bounded in bytes, and connections are counted per client address and in all.
Parsing is h11's (a sans-I/O HTTP/1.1 state machine); why not a ready-made server is said
in web/server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import ssl
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

import h11

from tower.config import ServingLimits
from web.app import MAX_BODY_BYTES
from web.identity import ENVIRON_KEY, client_address
from web.tls import TlsContexts, TlsStream

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

#: Largest request line and headers together (h11 answers 431 past it).
MAX_HEAD_BYTES = 64 * 1024
#: Bytes read from a socket at once.
READ_BYTES = 64 * 1024
#: The longest a closed connection may take to hand its last bytes to its client.
CLOSE_SECONDS = 2.0
#: After refusing a request, what the front still reads and throws away of what the
#: client is sending (nginx's "lingering close"): a client that writes its whole body
#: before it reads, as requests does, otherwise meets a reset instead of the answer.
LINGER_SECONDS = 10.0
LINGER_BYTES = 64 * 1024 * 1024

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class RequestError(Exception):
    """A request answered by the front itself, and its connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Admission:
    """Connections open per client address and in all; a trusted proxy speaks for many
    clients, so it is counted in all only."""

    def __init__(self, limits: ServingLimits, exempt: Iterable[str]) -> None:
        self._total = limits.connections
        self._per_client = limits.connections_per_client
        self._exempt = frozenset(exempt)
        self._open: Counter[str] = Counter()
        self._count = 0

    def enter(self, address: str) -> bool:
        """Count a connection in, or say False when it is one too many."""
        if self._count >= self._total:
            log.warning("api: %d connections open, client=%s refused", self._count, address)
            return False
        if address not in self._exempt and self._open[address] >= self._per_client:
            if self._open[address] == self._per_client:
                # said once each time the client reaches its limit, not once per attempt
                log.warning("api: client=%s holds %d connections, more refused", address,
                            self._per_client)
                self._open[address] += 1  # marks the warning as given; undone by leave()
            return False
        self._open[address] += 1
        self._count += 1
        return True

    def leave(self, address: str) -> None:
        self._count -= 1
        if self._open[address] > self._per_client:
            self._open[address] = self._per_client
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


class Stream(Protocol):
    """What the front reads and writes a connection through: plain, or TlsStream."""

    async def read(self, size: int) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...


class PlainStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.read = reader.read
        self.write = writer.write
        self.drain = writer.drain


class Front:
    """Serves `app` on a listening socket until stop(); run() is the event loop's body."""

    def __init__(self, sock: socket.socket, app: WSGIApplication, limits: ServingLimits,
                 tls: TlsContexts | None, workers: int, trusted_proxies: Iterable[str]) -> None:
        self._sock = sock
        self._app = app
        self._limits = limits
        self._tls = tls
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="api-worker")
        self._admission = Admission(limits, trusted_proxies)
        self._server_name, self._server_port = sock.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._halt = False

    def run(self) -> None:
        asyncio.run(self._serve())

    def stop(self) -> None:
        """Stop accepting, close every connection, end run() (from any thread)."""
        self._halt = True  # seen by _serve() if its loop is not up yet
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._halt:
            return
        server = await asyncio.start_server(self._accepted, sock=self._sock, limit=READ_BYTES)
        try:
            await self._stopped.wait()
        finally:
            server.close()  # asyncio.run then cancels every connection's task
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection (called before anything is read from it): admitted, or closed."""
        address = client_address(writer.get_extra_info("peername")[0])
        if not self._admission.enter(address):
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          address: str) -> None:
        stream: Stream = PlainStream(reader, writer)
        try:
            identity: dict[str, Any] = {}
            if self._tls is not None:
                stream = TlsStream(self._tls.current(), reader, writer, READ_BYTES)
                async with asyncio.timeout(self._limits.handshake_timeout):
                    identity[ENVIRON_KEY] = await stream.handshake()
            await self._converse(stream, address, identity)
        except RequestError as error:
            await _refuse(stream, error)
            await _linger(reader)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or was too slow: nothing to say to it
        except ssl.SSLError as error:
            log.info("api: TLS with client=%s failed: %s", address, error.reason or error)
        except Exception:
            log.exception("api: the connection of client=%s failed", address)
        finally:
            self._admission.leave(address)
            # close() sends what is written (an alert, an error answer) first; a client that
            # reads none of it is cut off soon after
            writer.close()
            asyncio.get_running_loop().call_later(CLOSE_SECONDS, writer.transport.abort)

    async def _converse(self, stream: Stream, address: str, identity: dict[str, Any]) -> None:
        limits = self._limits
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        loop = asyncio.get_running_loop()
        wait = limits.head_timeout  # a new connection owes its first request at once
        while True:
            if connection.trailing_data[0] or connection.their_state is not h11.IDLE:
                pass  # the next request has begun already (pipelined)
            elif not await _wait_readable(stream, wait, connection):
                return  # silent too long, or closed: the connection simply ends
            wait = limits.idle_timeout
            async with _deadline(limits.head_timeout, "request head"):
                request = await _next(connection, stream)
            if not isinstance(request, h11.Request):
                return
            async with _deadline(limits.body_timeout, "request body"):
                body = await _body(connection, stream, request)
            environ = self._environ(request, body, address, identity)
            answer = await loop.run_in_executor(self._pool, self._call, environ)
            async with _deadline(limits.body_timeout, "answer"):
                await _send(connection, stream, request, answer)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    def _environ(self, request: h11.Request, body: bytes, address: str,
                 identity: dict[str, Any]) -> dict[str, Any]:
        path, _, query = request.target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": str(self._server_name),
            "SERVER_PORT": str(self._server_port),
            "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}",
            "REMOTE_ADDR": address,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self._tls else "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            **identity,
        }
        for name, value in request.headers:
            if b"_" in name:
                continue  # X_Client_DN would reach the environ as X-Client-DN does
            key = name.decode("ascii").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ

    def _call(self, environ: dict[str, Any]) -> Answer:
        """Run the app on one request, in a worker thread; its whole answer."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self._app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("api: %s %s failed", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return _error_answer(500, "the server failed to answer; see the tower's log")
        status, headers = started
        return (int(status[:3]), [(k.encode("latin-1"), v.encode("latin-1"))
                                  for k, v in headers], b"".join(chunks))

_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


async def _refuse(stream: Stream, error: RequestError) -> None:
    """Answer a request the front itself refuses; the connection closes after it."""
    status, headers, body = _error_answer(error.status, str(error))
    reason = _REASONS.get(status, "Error").encode()
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"".join(
        b"%s: %s\r\n" % pair for pair in (*headers, (b"connection", b"close"))) + b"\r\n"
    try:
        stream.write(head + body)
        async with asyncio.timeout(1):
            await stream.drain()
    except (ConnectionError, TimeoutError, ssl.SSLError):
        pass


async def _linger(reader: asyncio.StreamReader) -> None:
    """Read and discard until the client closes, or LINGER_SECONDS or LINGER_BYTES pass: the
    kernel would otherwise reset a connection closed with unread bytes, and the client
    would lose the answer already sent to it. Raw bytes (still encrypted under TLS)."""
    left = LINGER_BYTES
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0 and (data := await reader.read(READ_BYTES)):
                left -= len(data)


def _error_answer(status: int, message: str) -> Answer:
    body = json.dumps({"error": _REASONS.get(status, "Error"), "message": message,
                       "field": None}).encode()
    return status, [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())], body


class _deadline:
    """The whole of a stage must be over within `seconds`, however the bytes trickle in."""

    def __init__(self, seconds: float, stage: str) -> None:
        self._timeout = asyncio.timeout(seconds)
        self._stage = stage
        self._seconds = seconds

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError:
            raise RequestError(408, f"the {self._stage} took longer than "
                                    f"{self._seconds:g} s") from None


async def _wait_readable(stream: Stream, seconds: float,
                         connection: h11.Connection) -> bool:
    """Wait for the first bytes of a request; False if none came in time."""
    try:
        async with asyncio.timeout(seconds):
            data = await stream.read(READ_BYTES)
    except TimeoutError:
        return False
    if not data:
        return False
    connection.receive_data(data)
    return True


async def _next(connection: h11.Connection, stream: Stream) -> Any:
    """The next h11 event, reading as much as it needs."""
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as error:
            raise RequestError(error.error_status_hint, str(error)) from None
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await stream.read(READ_BYTES))


async def _body(connection: h11.Connection, stream: Stream, request: h11.Request) -> bytes:
    """The whole request body, at most MAX_BODY_BYTES."""
    too_large = RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    for name, value in request.headers:
        if name == b"content-length" and int(value) > MAX_BODY_BYTES:
            raise too_large
    if connection.they_are_waiting_for_100_continue:
        stream.write(connection.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next(connection, stream)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                raise too_large
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise ConnectionResetError("closed within the request body")


async def _send(connection: h11.Connection, stream: Stream,
                request: h11.Request, answer: Answer) -> None:
    status, headers, body = answer
    if not any(name.lower() == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    out = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    if body and request.method != b"HEAD" and status not in (204, 304):
        out += connection.send(h11.Data(data=body)) or b""
    out += connection.send(h11.EndOfMessage()) or b""
    stream.write(out)
    await stream.drain()
