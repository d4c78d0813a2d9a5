"""The tower's configuration: one `tower.yaml`, loaded once and passed in.

Found by `--config`, then `TOWER_CONFIG`, then `$TOWER_HOME/tower.yaml`
(default `~/.gridtower`). `TOWER_DATABASE_URL` and `TOWER_BROKER_URL`
override the file's database and broker.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveFloat, field_validator, model_validator

from sites.batch import check_options
from sites.config import SiteConfig, load_sites
from sites.schema import MAX_SECONDS, Seconds, Strict, build, read_yaml, require_private
from tower.auth.access import AccessSettings
from tower.errors import ConfigError
from tower.logs import LoggingSettings
from tower.management.notification_settings import NotificationSettings, resolve_notifications
from tower.retries.policy import STANDARD, Policy, load_policies
from transfer.base import DestinationSettings

DEFAULT_HOME = Path("~/.gridtower")


class TlsSettings(Strict):
    """HTTPS for the API, with client certificates. Paths are relative to tower.yaml."""

    #: The server's certificate (PEM, followed by its chain if any) and its key (mode 0600).
    cert: Path
    key: Path
    #: The CAs whose client certificates are accepted: a PEM file, or a directory whose
    #: *.pem and *.crt files are read (a grid CA bundle such as /etc/grid-security/certificates).
    ca_bundle: Path
    #: Revocation lists checked for every client certificate: a PEM file, or a directory of
    #: them (*.pem, *.crl, and *.r0 as fetch-crl writes); re-read when they change. With it,
    #: a client whose CA has no CRL here is refused.
    crl: Path | None = None
    #: The tower's own CA directory (`tower ca init`): it mints each pilot's credential.
    #: Without it, pilots cannot reach an API that asks for certificates.
    pilot_ca: Path | None = None


class ServingLimits(Strict):
    """What one client may hold of the API's server (web/front.py): connections, and how
    long each stage of a request may take, as a whole, not per read."""

    #: Connections open at once, in all (each costs memory only, no thread).
    connections: int = Field(default=8192, gt=0)
    #: Connections open at once from one client address (a site's NAT may carry hundreds
    #: of pilots; trusted proxies are not counted).
    connections_per_client: int = Field(default=512, gt=0)
    #: The TLS handshake, from the connection's start.
    handshake_timeout: Seconds = Field(default=10, gt=0, le=3600)
    #: The request line and headers, from their first byte.
    head_timeout: Seconds = Field(default=10, gt=0, le=3600)
    #: The request body, from the end of the head (bodies are at most 8 MiB).
    body_timeout: Seconds = Field(default=60, gt=0, le=3600)
    #: A kept-alive connection waiting for its next request.
    idle_timeout: Seconds = Field(default=30, gt=0, le=3600)


class ApiSettings(Strict):
    bind: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    #: The URL pilots use to reach the API; derived from bind and port when unset.
    url: str | None = None
    #: HTTPS with client certificates; absent, the API speaks plain HTTP.
    tls: TlsSettings | None = None
    #: Addresses of reverse proxies that verify client certificates themselves and pass the
    #: subject in `identity_header`; from any other address that header is ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    identity_header: str = Field(default="X-Client-DN", pattern=r"^[A-Za-z0-9-]+$")
    #: Plain HTTP on an address other hosts reach: every caller may do everything. Refused
    #: unless this says so; the pages and `tower sites` then show it in red.
    insecure: bool = False
    limits: ServingLimits = ServingLimits()

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, proxies: list[str]) -> list[str]:
        # written as the server sees REMOTE_ADDR, so they compare as strings
        try:
            return [str(ipaddress.ip_address(proxy)) for proxy in proxies]
        except ValueError as exc:
            raise ValueError(f"{exc} (give the proxies' IP addresses)") from None

    @model_validator(mode="after")
    def _plain_http_on_loopback(self) -> ApiSettings:
        # without TLS the API trusts every caller (web/auth.py): fine on the tower's own
        # machine only
        if self.tls is None and not self.insecure and not is_loopback(self.bind):
            raise ValueError(f"api.bind {self.bind} is reachable from other hosts, and "
                             "without api.tls every caller may do everything: set api.tls, "
                             "bind 127.0.0.1, or say api.insecure: true")
        return self

    @property
    def exposed(self) -> bool:
        """Plain HTTP that other hosts reach (allowed by api.insecure)."""
        return self.tls is None and not is_loopback(self.bind)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


class LoopSettings(Strict):
    #: Pause between two cycles of each loop.
    interval: Seconds = Field(default=5, ge=0)
    #: Least time between the starts of two cycles of a loop that has work waiting (it did
    #: work, or the API woke it), so each cycle's fixed cost is spread over a batch.
    busy_pause: float = Field(default=0.1, ge=0, le=MAX_SECONDS)
    #: Jobs the matchmaker publishes per cycle at most.
    batch_size: int = Field(default=2000, gt=0)
    #: A job left assigned this long (a crash or a broker outage before the confirm), or
    #: queued this long while its broker queue is empty, is published again.
    republish_after: Seconds = Field(default=60, gt=0)
    #: A loop whose last cycle ended longer ago than `interval` plus this is stuck: /readyz
    #: answers 503 and the systemd watchdog is no longer fed (a long stage-out or a large
    #: publication is one cycle: allow for it).
    stall_after: Seconds = Field(default=600, gt=0)


class MonitorSettings(Strict):
    #: An attempt whose last heartbeat is older than this is lost.
    heartbeat_timeout: Seconds = Field(default=600, gt=0)
    #: How often pilots send a heartbeat (handed to each pilot).
    heartbeat_interval: Seconds = Field(default=60, gt=0)
    #: A job queued at a site this long without a pilot claiming it goes back to the
    #: retry policy (class claim_timeout), to run elsewhere.
    claim_timeout: Seconds = Field(default=4 * 3600, gt=0)
    #: Where attempts' full logs too big for the database are kept (relative to the tower's
    #: home), and the largest gzipped log kept in the database instead.
    logs_dir: str = Field(default="attempt-logs", min_length=1)
    logs_in_database: int = Field(default=64 * 1024, ge=0)
    #: A name from storage.destinations to keep those logs at instead of `logs_dir`
    #: (under `attempt-logs/` there).
    logs_destination: str | None = None
    #: Days an attempt's full log is kept (its tail stays with the attempt).
    log_retention_days: int = Field(default=30, gt=0)
    #: Days a site queue's history is kept (minute by minute for the last week, hour by
    #: hour before).
    history_days: int = Field(default=90, ge=7)


def site_storage(site: SiteConfig) -> DestinationSettings:
    """A site's storage root as a storage element: local, or SFTP through its SSH access."""
    if site.ssh is None:
        return DestinationSettings(url=f"local:{site.storage}")
    access = site.ssh
    return DestinationSettings(url=f"sftp://{access.user}@{access.host}:{access.port}"
                                   f"{site.storage}", key_file=access.key_file,
                               known_hosts=access.known_hosts, timeout=access.timeout)


class StorageSettings(Strict):
    #: Named destinations, each a URL or a mapping (see DestinationSettings).
    destinations: dict[str, DestinationSettings] = Field(default_factory=dict)
    #: Destinations a production uses when it names none.
    default: list[str] = Field(default_factory=list)
    #: Failed copies are retried after this, doubling per try up to an hour.
    retry_delay: Seconds = Field(default=30, gt=0)
    #: An output being staged is leased this long, and the lease renewed while its copies
    #: run; outputs a dead tower leased go to another after this.
    lease: Seconds = Field(default=120, gt=0)

    @field_validator("destinations", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        # a URL alone is short for {url: URL}
        if isinstance(value, dict):
            return {name: {"url": entry} if isinstance(entry, str) else entry
                    for name, entry in value.items()}
        return value


class RetrySettings(Strict):
    #: The tower's own retry policies: a YAML file (whose `policies` key maps names to
    #: policies) or such a mapping inline. They join the shipped ones (tower/retries/policies.yaml).
    policies: str | dict[str, Any] | None = None
    #: The policy of productions that name none.
    policy: str = Field(default=STANDARD, min_length=1)


class HealthSettings(Strict):
    """When a site is taken out of brokering for failing for infrastructure reasons."""

    #: Attempts that ended within this window count.
    window: Seconds = Field(default=1800, gt=0)
    #: Fewer ended attempts than this say nothing about a site.
    min_attempts: int = Field(default=5, gt=0)
    #: The share of those attempts failed by the site itself that starts a cool-down.
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    #: How long a site stays out of brokering; it comes back by itself afterwards.
    cooldown: Seconds = Field(default=900, gt=0)


class RetentionSettings(Strict):
    """How long the full history of a finished production is kept (`tower db prune`)."""

    #: A production none of whose jobs can move again, finished longer ago than this, keeps
    #: each job's last event only and its activity in one row per day.
    finished_for: Seconds = Field(default=30 * 86400, gt=0)


class TowerFile(Strict):
    """The keys of tower.yaml."""

    database: str | None = None
    #: "database" (the embedded queue) or amqp://user:password@host:port/vhost (amqps:// for TLS).
    broker: str = "database"
    #: Settings of the broker: for RabbitMQ exchange, queue_type (classic or quorum),
    #: confirm_timeout, ca_file, cert_file, key_file.
    broker_options: dict[str, Any] = Field(default_factory=dict)
    sites: str = "sites.yaml"
    api: ApiSettings = ApiSettings()
    loops: LoopSettings = LoopSettings()
    monitor: MonitorSettings = MonitorSettings()
    storage: StorageSettings = StorageSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    retention: RetentionSettings = RetentionSettings()
    #: Who may do what through the API (with api.tls): roles by certificate subject.
    access: AccessSettings = AccessSettings()
    #: Who hears of production events (tower/management/notify.py): webhooks, e-mail.
    notifications: NotificationSettings = NotificationSettings()
    #: Fair shares of the sites' slots between production groups (a production's
    #: `group`), as weights; a group not named weighs 1.
    shares: dict[str, PositiveFloat] = Field(default_factory=dict)
    #: Where the tower's log goes and how much of it (tower/logs.py).
    logging: LoggingSettings = LoggingSettings()


class TowerConfig(Strict):
    """The loaded configuration, paths resolved, overrides applied."""

    path: Path
    home: Path
    database_url: str
    broker_url: str
    broker_options: dict[str, Any]
    api: ApiSettings
    loops: LoopSettings
    monitor: MonitorSettings
    storage: StorageSettings
    retry: RetrySettings
    health: HealthSettings
    access: AccessSettings
    notifications: NotificationSettings = NotificationSettings()
    retention: RetentionSettings = RetentionSettings()
    shares: dict[str, float] = Field(default_factory=dict)
    logging: LoggingSettings = LoggingSettings()
    #: Every retry policy by name: the shipped ones and the tower's own.
    policies: dict[str, Policy]
    sites: dict[str, SiteConfig]
    #: The file the sites come from.
    sites_path: Path | None = None

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api.tls else "http"
        return self.api.url or f"{scheme}://{self.api.bind}:{self.api.port}"

    def listening_on(self, bind: str | None, port: int | None) -> TowerConfig:
        """This configuration with the API listening elsewhere (several `tower serve` of one
        tower.yaml behind a proxy), checked as if tower.yaml said so."""
        changes = {key: value for key, value in (("bind", bind), ("port", port))
                   if value is not None}
        api = build(ApiSettings, {**self.api.model_dump(), **changes},
                    f"{self.path} with the command line", prefix="api")
        return self.model_copy(update={"api": api})


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The path of tower.yaml: explicit, else $TOWER_CONFIG, else $TOWER_HOME/tower.yaml."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("TOWER_CONFIG"):
        return Path(os.environ["TOWER_CONFIG"]).expanduser()
    home = Path(os.environ.get("TOWER_HOME", str(DEFAULT_HOME))).expanduser()
    return home / "tower.yaml"


def load_config(explicit: str | os.PathLike[str] | None = None, **overrides: Any) -> TowerConfig:
    """Load tower.yaml and its sites file; raise ConfigError naming file and key."""
    path = find_config(explicit).resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such configuration file (run `tower init DIR`, "
                          "or give --config or TOWER_CONFIG)")
    raw = build(TowerFile, read_yaml(path), str(path))
    home = path.parent
    database = os.environ.get("TOWER_DATABASE_URL") or raw.database
    if not database:
        database = f"sqlite:///{home / 'tower.db'}"
    broker = os.environ.get("TOWER_BROKER_URL") or raw.broker
    storage = raw.storage.model_copy(update={
        "destinations": {name: _resolve_destination(name, destination, home, path)
                         for name, destination in raw.storage.destinations.items()},
    })
    named = [("storage.default", name) for name in storage.default]
    if raw.monitor.logs_destination is not None:
        named.append(("monitor.logs_destination", raw.monitor.logs_destination))
    for field, name in named:
        if name not in storage.destinations:
            raise ConfigError(f"{path}: {field}: {name!r} is not a destination "
                              f"(known: {', '.join(storage.destinations) or 'none'})",
                              field=field)
    sites_path = _resolve(raw.sites, home)
    sites = {name: _check_site(site, sites_path) for name, site in load_sites(sites_path).items()}
    for site in sites.values():
        if site.data is not None and site.data.destination not in storage.destinations:
            raise ConfigError(f"{_resolve(raw.sites, home)}: sites.{site.name}.data.destination: "
                              f"{site.data.destination!r} is not a destination of {path} "
                              f"(known: {', '.join(storage.destinations) or 'none'})",
                              field=f"sites.{site.name}.data.destination")
    policies = load_policies(raw.retry.policies, home)
    if raw.retry.policy not in policies:
        raise ConfigError(f"{path}: retry.policy: no policy named {raw.retry.policy!r} "
                          f"(known: {', '.join(sorted(policies))})", field="retry.policy")
    values: dict[str, Any] = {
        "path": path, "home": home, "database_url": _resolve_sqlite(database, home),
        "broker_url": broker, "broker_options": raw.broker_options,
        "api": _resolve_api(raw.api, home, path),
        "loops": raw.loops, "monitor": raw.monitor, "storage": storage,
        "retry": raw.retry, "health": raw.health, "policies": policies, "access": raw.access,
        "sites": sites, "sites_path": sites_path,
        "notifications": resolve_notifications(raw.notifications, home, path),
        "shares": raw.shares, "retention": raw.retention,
        "logging": _resolve_logging(raw.logging, home),
    }
    values.update(overrides)
    return TowerConfig(**values)


def _resolve(value: str, home: Path) -> Path:
    return (home / Path(value).expanduser()).resolve()


def _check_site(site: SiteConfig, source: Path) -> SiteConfig:
    """What only the tower's machine can check of a site: its batch options as its batch
    system reads them, and its SSH key readable by the tower's user alone."""
    check_options(site, str(source))
    if site.ssh is not None:
        # as ssh refuses a key others may read, and as destinations' keys are refused
        require_private(Path(site.ssh.key_file).expanduser(), f"sites.{site.name}.ssh.key_file",
                        source)
    return site


def _resolve_destination(name: str, destination: DestinationSettings, home: Path,
                         source: Path) -> DestinationSettings:
    """Local paths, key_file and known_hosts made absolute; the private key checked."""
    update = {"known_hosts": str(_resolve(destination.known_hosts, home))}
    if destination.scheme == "local":
        update["url"] = f"local:{_resolve(destination.root, home)}"
    if destination.key_file is not None:
        key_file = _resolve(destination.key_file, home)
        require_private(key_file, f"storage.destinations.{name}.key_file", source)
        update["key_file"] = str(key_file)
    return destination.model_copy(update=update)


def _resolve_api(api: ApiSettings, home: Path, source: Path) -> ApiSettings:
    """TLS paths made absolute and checked: each there, the private key 0600."""
    if api.tls is None:
        return api
    paths = {name: _resolve(str(value), home) for name, value in api.tls
             if value is not None}
    for name, path in paths.items():
        key = f"api.tls.{name}"
        if name == "key":
            require_private(path, key, source)
        elif not path.exists():
            raise ConfigError(f"{source}: {key}: {path}: no such file or directory", field=key)
    return api.model_copy(update={"tls": api.tls.model_copy(update=paths)})


def _resolve_logging(settings: LoggingSettings, home: Path) -> LoggingSettings:
    if settings.file is None:
        return settings
    path = _resolve(str(settings.file.path), home)
    return settings.model_copy(update={"file": settings.file.model_copy(update={"path": path})})


def _resolve_sqlite(url: str, home: Path) -> str:
    # a relative SQLite path is relative to the config file, not to the caller's cwd
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(_resolve(url[len(prefix):], home))
    return url
