"""The `tower` command against a remote tower: its API over HTTPS, with a client certificate.

Where the client's settings come from, first found wins: the flags (`--url`,
`--cert`, `--key`, `--ca`), then the client file (`--client-config`, else
$TOWER_CLIENT_CONFIG, else ~/.gridtower/client.yaml when it exists). The
server's JSON errors become the same exceptions, with the same exit codes,
as when the command runs beside the database.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

from pilots.urls import redact
from tower.errors import (
    BackendError,
    ConfigError,
    Conflict,
    Forbidden,
    GridtowerError,
    NotFound,
    SpecError,
    Unauthorized,
)

if TYPE_CHECKING:
    from http.client import HTTPConnection

# The standard library's HTTP client, not requests (nor pydantic for the settings): a
# remote command answers in about 100 ms, where importing those two took 90 of them.

DEFAULT_CLIENT_FILE = Path("~/.gridtower/client.yaml")
#: Seconds for connecting and for each answer.
TIMEOUT = 60


@dataclass(frozen=True)
class ClientSettings:
    #: The tower's URL, e.g. https://tower.example.org:8470
    url: str
    #: The client certificate and its key (0600).
    cert: str | None = None
    key: str | None = None
    #: The CA bundle that signed the tower's certificate (default: the system's).
    ca: str | None = None


def settings(values: dict[str, Any], source: str) -> ClientSettings:
    """Checked client settings; a bad value is a ConfigError naming `source` and the key
    (never the URL, which may hold a password)."""
    def refuse(key: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {message}", field=key)

    for key, value in values.items():
        if key not in ("url", "cert", "key", "ca"):
            raise refuse(key, "unknown key")
        if not isinstance(value, str):
            raise refuse(key, "expected a string")
    url = values["url"]
    if not url.startswith(("http://", "https://")):
        raise refuse("url", "must start with http:// or https://")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (urlsplit checks the port when it is read)
    except ValueError:
        raise refuse("url", "the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise refuse("url", "no host")
    return ClientSettings(**values)


#: HTTP status -> the error the CLI raises (and so its exit code).
ERRORS: dict[int, type[GridtowerError]] = {400: SpecError, 401: Unauthorized,
                                           403: Forbidden, 404: NotFound, 409: Conflict}


def client_settings(url: str | None, cert: str | None, key: str | None, ca: str | None,
                    path: str | None) -> ClientSettings | None:
    """The remote tower to use, or None to work beside the database."""
    file_values: dict[str, Any] = {}
    chosen = path or os.environ.get("TOWER_CLIENT_CONFIG")
    client_file = Path(chosen).expanduser() if chosen else DEFAULT_CLIENT_FILE.expanduser()
    if chosen or (url is None and client_file.exists()):
        from sites.schema import read_yaml

        file_values = read_yaml(client_file) or {}
        if not isinstance(file_values, dict):
            raise ConfigError(f"{client_file}: expected a mapping of url, cert, key, ca")
        base = client_file.parent
        for name, value in file_values.items():
            if name in ("cert", "key", "ca") and not isinstance(value, str):
                raise ConfigError(f"{client_file}: {name}: expected a file's path",
                                  field=name)
        file_values = {name: (str((base / Path(value).expanduser()).resolve())
                              if name in ("cert", "key", "ca") else value)
                       for name, value in file_values.items()}
    flags = {name: value for name, value in
             {"url": url, "cert": cert, "key": key, "ca": ca}.items() if value is not None}
    values = {**file_values, **flags}
    if "url" not in values:
        return None
    return settings(values, str(client_file) if file_values else "--url")


class Remote:
    """Calls to one tower's API, reusing one HTTP(S) connection."""

    def __init__(self, chosen: ClientSettings) -> None:
        self.base = chosen.url.rstrip("/") + "/api/v1"
        #: The base as errors show it: a password in the URL is never echoed.
        self.where = redact(self.base)
        parts = urlsplit(self.base)
        self._password = parts.password
        self._prefix = parts.path
        self._headers = {"Accept": "application/json", "User-Agent": "gridtower-tower"}
        if parts.username is not None:  # user:password@ in the URL: HTTP Basic, as curl does
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(
                pair.encode()).decode()
        self.connection = self._connect(parts.scheme, parts.hostname or "", parts.port, chosen)

    @staticmethod
    def _connect(scheme: str, host: str, port: int | None,
                 chosen: ClientSettings) -> HTTPConnection:
        # http.client (and ssl) here, not at the top: every local command asks
        # client_settings whether a remote tower is named, and most name none
        from http.client import HTTPConnection, HTTPSConnection

        if scheme == "http":
            return HTTPConnection(host, port, timeout=TIMEOUT)
        import ssl

        # no --ca: the system's bundle, or the one REQUESTS_CA_BUNDLE names as before
        bundle = chosen.ca or os.environ.get("REQUESTS_CA_BUNDLE") or None
        try:
            context = ssl.create_default_context(cafile=bundle)
            if chosen.cert:
                context.load_cert_chain(chosen.cert, chosen.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"client certificate or CA: {exc}") from None
        return HTTPSConnection(host, port, timeout=TIMEOUT, context=context)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer; raises the GridtowerError the server's answer means."""
        from http.client import HTTPException

        query = urlencode({name: value for name, value in (params or {}).items()
                           if value is not None}, doseq=True)
        target = self._prefix + path + (f"?{query}" if query else "")
        headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, target, body=payload, headers=headers)
            answer = self.connection.getresponse()
            raw = answer.read()
        except (OSError, HTTPException) as exc:
            self.connection.close()
            raise BackendError(f"{self.where}: {self._scrub(str(exc) or type(exc).__name__)}"
                               ) from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if 200 <= answer.status < 400 and data is not None:
            return data
        message = data.get("message") if isinstance(data, dict) else None
        field = data.get("field") if isinstance(data, dict) else None
        error = ERRORS.get(answer.status, BackendError)
        raise error(f"{method} {path}: {message or f'HTTP {answer.status}'}", field=field)

    def _scrub(self, text: str) -> str:
        # an error may quote what it was given, userinfo and all
        return text.replace(self._password, "***") if self._password else text

    def close(self) -> None:
        self.connection.close()
