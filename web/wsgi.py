"""The API as a WSGI application, for gunicorn (or another WSGI server) behind a reverse
proxy that checks client certificates (contrib/nginx/gridtower.conf):

    TOWER_CONFIG=/etc/gridtower/tower.yaml gunicorn -c contrib/gunicorn.conf.py web.wsgi

`application` is made on first use, from the tower.yaml that TOWER_CONFIG names (or the
default home): in each worker after it forked, as a database pool must not cross a fork
(do not preload it). Like `tower serve`, it records that the API serves
(tower.loops.presence) and takes the caller's DN from `api.identity_header` when one of
`api.trusted_proxies` sends it. A WSGI server hands the app no client certificate, so
the proxy is the only way callers are named here.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_made: list[WSGIApplication] = []
_lock = threading.Lock()


def create(config_path: str | None = None) -> WSGIApplication:
    """The tower's API app for `config_path` (default: TOWER_CONFIG, then the home)."""
    from tower.config import load_config
    from tower.loops import presence
    from tower.runtime import Runtime
    from web.app import create_app
    from web.identity import ProxiedIdentity

    runtime = Runtime.open(load_config(config_path))
    presence.keep(runtime, threading.Event())  # for the life of the worker
    api = runtime.config.api
    return ProxiedIdentity(create_app(runtime), api.trusted_proxies, api.identity_header)


def __getattr__(name: str) -> Any:
    # `application` is made when the server first asks for it, not when this is imported
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if not _made:
            _made.append(create())
    return _made[0]
