"""Serving the API in a thread of the tower process: HTTPS with client certificates when
`api.tls` is set (`web/tls.py`), plain HTTP otherwise, through the asyncio front of
`web/front.py`.

Why that front, and not cheroot (used before) or a ready-made asyncio server:
- cheroot shook TLS hands in its one accepting thread (ten silent connections stalled
  everyone) and gave each connection a worker thread from its first byte, with a timeout
  per read only (fifteen clients sending a header line every 2 s held all ten workers).
- hypercorn (0.18, read after `pip download`) accepts and shakes hands in asyncio, but
  its `read_timeout` is per read (`wait_for(reader.read(...))` in `asyncio/tcp_server.py`),
  so a head sent one line at a time never ends; it has no limit of connections per client
  or in all; and it gives the app nothing of the client's certificate (no
  `getpeercert` anywhere), which the API's identity needs. Each would be a patch over it.
- our front is some 300 lines on h11 (the sans-I/O HTTP/1.1 parser hypercorn itself uses):
  asyncio accepts and shakes hands, each stage of a connection has a deadline for the
  whole stage, heads and bodies are bounded, connections are counted per client address
  and in all (`api.limits`), and only a complete request takes a thread of a pool as large
  as the database pool (tower/model/db.py), so a slow client holds no thread and the app never
  waits for a database connection.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING

from tower.config import TowerConfig
from tower.loops import presence
from tower.model.db import POOL_SIZE
from tower.runtime import Runtime
from web.app import create_app
from web.front import Front
from web.identity import ProxiedIdentity
from web.tls import TlsContexts

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

#: Connections the kernel holds before the loop accepts them (pilots come in bursts).
LISTEN_BACKLOG = 1024


class ApiServer:
    """A bound socket first (so port 0 resolves to a real port), the app once the tower opened."""

    def __init__(self, config: TowerConfig) -> None:
        self._api = api = config.api
        self._tls = TlsContexts(api.tls) if api.tls is not None else None
        self._socket = _listen(api.bind, api.port)
        port = self._socket.getsockname()[1]
        self.url = f"{'https' if api.tls else 'http'}://{api.bind}:{port}"
        self._front: Front | None = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self.thread = threading.Thread(target=self._run, name="api", daemon=True)
        if api.exposed:
            log.warning("api: plain HTTP on %s, reachable from other hosts, and every caller "
                        "may do everything (api.insecure: true); set api.tls", api.bind)

    def bind(self, runtime: Runtime) -> None:
        """Serve `runtime` from now on, recording that it serves (tower.loops.presence: the
        monitor counts pilots' silence only while some API listened)."""
        self.serve(create_app(runtime))
        presence.keep(runtime, self._stop)

    def serve(self, app: WSGIApplication) -> None:
        """Serve `app` from now on, behind the identity of trusted proxies."""
        api = self._api
        self._front = Front(self._socket,
                            ProxiedIdentity(app, api.trusted_proxies, api.identity_header),
                            api.limits, self._tls, POOL_SIZE, api.trusted_proxies)
        self.thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._front is not None:
            self._front.stop()
            # not thread.is_alive(): on Python 3.11 a join() that Ctrl-C interrupted (`tower
            # serve` waits in one) leaves the thread marked stopped while it still serves,
            # and closing the socket under its event loop ends it with a traceback
            self._ended.wait(timeout=10)
        self._socket.close()

    def _run(self) -> None:
        assert self._front is not None
        try:
            self._front.run()
        except Exception:
            log.exception("api: the server stopped")
        finally:
            self._ended.set()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host` (an address or a name) and `port` (0: any free one)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def start_server(config: TowerConfig) -> tuple[ApiServer, str]:
    server = ApiServer(config)
    return server, server.url
