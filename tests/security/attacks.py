"""Slow and silent clients, as an attacker without a certificate would send them; loopback
only, bounded in connections and time, every socket closed at the end. Used by the tests
here and by bench/slowclients.py."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The attacker gives up after this long in any case.
MOST_SECONDS = 60.0


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections that never send a byte (no TLS handshake either)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def slow_headers(port: int, count: int, tls: bool, interval: float = 2.0) -> Iterator[None]:
    """`count` connections (over TLS without a certificate when `tls`) each sending a
    request head one header line every `interval` seconds, never ending it."""
    stop = threading.Event()
    sockets: list[socket.socket] = []
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker trusts anything
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sockets.append(context.wrap_socket(sock) if tls else sock)
    _send_all(sockets, b"GET /api/v1/productions HTTP/1.1\r\nHost: tower\r\n")

    def trickle() -> None:
        deadline = time.monotonic() + MOST_SECONDS
        line = 0
        while not stop.wait(interval) and time.monotonic() < deadline:
            line += 1
            _send_all(sockets, b"X-Slow-%d: %d\r\n" % (line, line))

    thread = threading.Thread(target=trickle, name="slow-headers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 10)
        for sock in sockets:
            sock.close()


def _send_all(sockets: list[socket.socket], data: bytes) -> None:
    for sock in sockets:
        # the server may have hung up on this one: the attack goes on with the others
        with contextlib.suppress(OSError):
            sock.sendall(data)


def ask(port: int, source: str = "127.0.0.1", path: str = "/api/v1/productions") -> int | None:
    """A plain-HTTP GET from the address `source`; its status, or None when the server
    closed the connection without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        try:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: tower\r\nConnection: close\r\n\r\n"
                         % path.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return None
    return int(answer.split(b" ", 2)[1]) if answer else None
