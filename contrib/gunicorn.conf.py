"""gunicorn's settings for the tower's API (web/wsgi.py), read from tower.yaml:

    TOWER_CONFIG=/etc/gridtower/tower.yaml gunicorn -c contrib/gunicorn.conf.py web.wsgi

It listens on api.bind:api.port, speaks HTTPS with api.tls's certificate (the proxy
checks the callers' certificates, web/wsgi.py), and runs GRIDTOWER_WORKERS processes
(default 2) of as many threads as one database pool has connections.
"""

import os

from tower.config import load_config
from tower.model.db import POOL_SIZE

_api = load_config().api

bind = [f"[{_api.bind}]:{_api.port}" if ":" in _api.bind else f"{_api.bind}:{_api.port}"]
workers = int(os.environ.get("GRIDTOWER_WORKERS", "2"))
worker_class = "gthread"
threads = POOL_SIZE
# each worker opens its own database pool: none may cross a fork
preload_app = False
if _api.tls is not None:
    certfile, keyfile = str(_api.tls.cert), str(_api.tls.key)
# the pilots' calls are short; a claim of a full batch is the longest
timeout = 120
# gunicorn 25+ opens a control socket in $HOME, which the unit keeps read-only
control_socket_disable = True
