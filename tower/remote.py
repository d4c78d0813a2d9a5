"""The `tower` command against a remote tower: its API over HTTPS, with a client certificate.

Where the client's settings come from, first found wins: the flags (`--url`,
`--cert`, `--key`, `--ca`), then the client file (`--client-config`, else
$TOWER_CLIENT_CONFIG, else ~/.gridtower/client.yaml when it exists). The
server's JSON errors become the same exceptions, with the same exit codes,
as when the command runs beside the database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import Field, field_validator

from pilots.urls import redact
from sites.schema import Strict, build, read_yaml
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

DEFAULT_CLIENT_FILE = Path("~/.gridtower/client.yaml")
#: Seconds for connecting and for each answer.
TIMEOUT = 60


class ClientSettings(Strict):
    #: The tower's URL, e.g. https://tower.example.org:8470
    url: str = Field(pattern=r"^https?://")
    #: The client certificate and its key (0600).
    cert: str | None = None
    key: str | None = None
    #: The CA bundle that signed the tower's certificate (default: the system's).
    ca: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        # checked here, where the message can leave the URL (and a password in it) out
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (urlsplit checks the port when it is read)
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError("no host")
        return url


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
    return build(ClientSettings, values, str(client_file) if file_values else "--url")


class Remote:
    """Calls to one tower's API, reusing one HTTPS connection."""

    def __init__(self, settings: ClientSettings) -> None:
        self.base = settings.url.rstrip("/") + "/api/v1"
        #: The base as errors show it: a password in the URL is never echoed.
        self.where = redact(self.base)
        self._password = urlsplit(self.base).password
        self.session = requests.Session()
        if settings.cert:
            self.session.cert = (settings.cert, settings.key) if settings.key else settings.cert
        # given with each request: REQUESTS_CA_BUNDLE would win over a session-wide setting
        self.verify: str | bool = settings.ca or True

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer; raises the GridtowerError the server's answer means."""
        query = {name: value for name, value in (params or {}).items() if value is not None}
        try:
            answer = self.session.request(method, self.base + path, params=query, json=body,
                                          timeout=TIMEOUT, verify=self.verify)
        except requests.RequestException as exc:
            raise BackendError(f"{self.where}: {self._scrub(str(exc))}") from None
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.ok and data is not None:
            return data
        message = (data or {}).get("message") if isinstance(data, dict) else None
        field = (data or {}).get("field") if isinstance(data, dict) else None
        error = ERRORS.get(answer.status_code, BackendError)
        raise error(f"{method} {path}: {message or f'HTTP {answer.status_code}'}", field=field)

    def _scrub(self, text: str) -> str:
        # requests may quote the URL it was given, userinfo and all
        return text.replace(self._password, "***") if self._password else text

    def close(self) -> None:
        self.session.close()
