"""Serving the API on loopback HTTP, in a thread of the tower process."""

from __future__ import annotations

import logging
import threading

from werkzeug.serving import BaseWSGIServer, make_server

from tower.config import TowerConfig
from tower.runtime import Runtime
from web.app import create_app


class ApiServer:
    """A bound socket first (so port 0 resolves to a real port), the app once the tower opened."""

    def __init__(self, config: TowerConfig) -> None:
        self._server: BaseWSGIServer = make_server(
            config.api.bind, config.api.port, app=None, threaded=True)  # type: ignore[arg-type]
        self.url = f"http://{config.api.bind}:{self._server.port}"
        self.thread = threading.Thread(target=self._server.serve_forever, name="api",
                                       daemon=True)

    def bind(self, runtime: Runtime) -> None:
        """Serve `runtime` from now on."""
        self._server.app = create_app(runtime)
        self.thread.start()

    def shutdown(self) -> None:
        if self.thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def start_server(config: TowerConfig) -> tuple[ApiServer, str]:
    # werkzeug logs every request at INFO; keep the tower's log for what matters
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ApiServer(config)
    return server, server.url
