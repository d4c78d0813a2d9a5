"""Serving the API in a thread of the tower process, with cheroot: HTTPS with client
certificates when `api.tls` is set (`web/tls.py`), plain HTTP otherwise."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cheroot.wsgi import Server

from tower import presence
from tower.config import TowerConfig
from tower.runtime import Runtime
from web.app import create_app
from web.identity import ProxiedIdentity
from web.tls import TlsAdapter

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

#: Requests served at once: as many as the database pool keeps connections (tower/db.py).
WORKER_THREADS = 10
#: Connections the kernel holds while all workers are busy (pilots come in bursts).
LISTEN_BACKLOG = 128


class _Server(Server):
    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        # cheroot writes to stderr; a refused handshake belongs in the tower's log
        log.log(level, "%s", msg, exc_info=traceback)


class ApiServer:
    """A bound socket first (so port 0 resolves to a real port), the app once the tower opened."""

    def __init__(self, config: TowerConfig) -> None:
        api = config.api
        self._server = _Server((api.bind, api.port), wsgi_app=None, numthreads=WORKER_THREADS,
                               request_queue_size=LISTEN_BACKLOG)
        if api.tls is not None:
            self._server.ssl_adapter = TlsAdapter(api.tls)
        self._trusted_proxies = api.trusted_proxies
        self._identity_header = api.identity_header
        _in_daemon_thread(self._server.prepare)  # binds, listens, starts the workers
        port = self._server.bind_addr[1]
        self.url = f"{'https' if api.tls else 'http'}://{api.bind}:{port}"
        self.thread = threading.Thread(target=self._server.serve, name="api", daemon=True)
        self._stop = threading.Event()

    def bind(self, runtime: Runtime) -> None:
        """Serve `runtime` from now on, recording that it serves (tower.presence: the
        monitor counts pilots' silence only while some API listened)."""
        self.serve(create_app(runtime))
        presence.keep(runtime, self._stop)

    def serve(self, app: WSGIApplication) -> None:
        """Serve `app` from now on, behind the identity of trusted proxies."""
        self._server.wsgi_app = ProxiedIdentity(app, self._trusted_proxies,
                                                self._identity_header)
        self.thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._server.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


def _in_daemon_thread(function: Callable[[], object]) -> None:
    """Call `function` in a daemon thread and wait for it. Threads inherit the daemon flag,
    so cheroot's workers started there do not keep a tower that failed before
    shutdown() (its database unreachable, say) from exiting."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            function()
        except BaseException as error:  # handed to the caller below
            raised.append(error)

    thread = threading.Thread(target=call, name="api-start", daemon=True)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


def start_server(config: TowerConfig) -> tuple[ApiServer, str]:
    server = ApiServer(config)
    return server, server.url
