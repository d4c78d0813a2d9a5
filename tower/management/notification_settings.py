"""The `notifications` section of tower.yaml: the events, where they go (webhooks, a mail
server) and when a production counts as failing. `tower.management.notify` records and
delivers them."""

from __future__ import annotations

import enum
import hashlib
import unicodedata
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from sites.schema import Seconds, Strict, require_private


class Event(enum.StrEnum):
    COMPLETED = "completed"                  # no job of an active production is left to run
    FAILING = "failing"                      # failed attempts reached the threshold
    AWAITING_APPROVAL = "awaiting_approval"  # a manager must approve it


#: The longest wait on a webhook or the mail server.
MAX_TIMEOUT = 120


def _all_events() -> list[Event]:
    return list(Event)


def _no_control_characters(value: str) -> str:
    # a CR or LF would end a header line early (header injection)
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("control characters are not allowed")
    return value


class Webhook(Strict):
    """An HTTP(S) endpoint that receives each event as a JSON POST."""

    #: http:// or https:// (the server's certificate is verified).
    url: str
    events: list[Event] = Field(default_factory=_all_events, min_length=1)
    timeout: Seconds = Field(default=10, gt=0, le=MAX_TIMEOUT)
    #: Sent with each POST, such as an Authorization token; never logged.
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _no_control_characters(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("no host in the URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials do not belong in the URL (it would reach logs): "
                             "send them in headers")
        try:
            parts.port  # noqa: B018 (urlsplit checks the port when it is read)
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not name or not all(char.isalnum() or char in "-_" for char in name):
                raise ValueError(f"{name!r} is not a header name")
            _no_control_characters(value)
        return headers

    @property
    def key(self) -> str:
        """Stable across restarts, and no secret: a digest of the URL."""
        return "webhook " + hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """What logs and outputs show: scheme and host, never path, query or headers."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"webhook {parts.scheme}://{parts.hostname}{port}"


class Smtp(Strict):
    """A mail server that sends each event to `recipients` as a short plain-text mail."""

    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    #: Upgrade the connection to TLS with STARTTLS (usually port 587).
    starttls: bool = False
    #: Speak TLS from the start (usually port 465). The server's certificate is verified.
    ssl: bool = False
    username: str | None = None
    #: A file holding the password, mode 0600 (relative to tower.yaml); read at each login.
    password_file: Path | None = Field(default=None, validate_default=True)
    sender: str
    recipients: list[str] = Field(min_length=1)
    events: list[Event] = Field(default_factory=_all_events, min_length=1)
    timeout: Seconds = Field(default=30, gt=0, le=MAX_TIMEOUT)

    @field_validator("ssl")
    @classmethod
    def _one_tls(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("starttls"):
            raise ValueError("choose starttls or ssl, not both")
        return value

    @field_validator("password_file")
    @classmethod
    def _login(cls, password_file: Path | None, info: ValidationInfo) -> Path | None:
        username = info.data.get("username")
        if (username is None) != (password_file is None):
            raise ValueError("username and password_file go together")
        if username is not None and not (info.data.get("starttls") or info.data.get("ssl")):
            raise ValueError("a password must not travel in clear: set starttls or ssl")
        return password_file

    @field_validator("sender")
    @classmethod
    def _sender(cls, sender: str) -> str:
        return _address(sender)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, recipients: list[str]) -> list[str]:
        return [_address(recipient) for recipient in recipients]

    @property
    def key(self) -> str:
        return "smtp"

    @property
    def name(self) -> str:
        return f"smtp {self.host}:{self.port}"


def _address(value: str) -> str:
    _no_control_characters(value)
    if "@" not in parseaddr(value)[1] or "," in value:
        raise ValueError(f"{value!r} is not one e-mail address")
    return value


Target = Webhook | Smtp


class NotificationSettings(Strict):
    """Who hears of production events, and when a production counts as failing."""

    webhooks: list[Webhook] = Field(default_factory=list)
    smtp: Smtp | None = None
    #: A production is failing once this share of its ended attempts failed...
    failure_threshold: float = Field(default=0.25, gt=0.0, le=1.0)
    #: ...and at least this many of its attempts ended.
    failure_min_attempts: int = Field(default=20, gt=0)
    #: A failed delivery is tried again after this, doubling per try up to an hour...
    retry_delay: Seconds = Field(default=30, gt=0)
    #: ...and given up after this many tries.
    max_tries: int = Field(default=8, gt=0)

    def targets(self) -> list[Target]:
        return [*self.webhooks, *([self.smtp] if self.smtp else [])]


def resolve_notifications(settings: NotificationSettings, home: Path,
                          source: Path) -> NotificationSettings:
    """The password file made absolute (relative to tower.yaml's `home`) and checked:
    there, and readable by its owner alone; raises ConfigError naming the key."""
    if settings.smtp is None or settings.smtp.password_file is None:
        return settings
    key = "notifications.smtp.password_file"
    path = (home / settings.smtp.password_file.expanduser()).resolve()
    require_private(path, key, source, "a password file")
    smtp = settings.smtp.model_copy(update={"password_file": path})
    return settings.model_copy(update={"smtp": smtp})
