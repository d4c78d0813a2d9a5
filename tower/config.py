"""The tower's configuration: one `tower.yaml`, loaded once and passed in.

Found by `--config`, then `TOWER_CONFIG`, then `$TOWER_HOME/tower.yaml`
(default `~/.gridtower`). `TOWER_DATABASE_URL` and `TOWER_BROKER_URL`
override the file's database and broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sites.config import SiteConfig, load_sites
from tower.errors import ConfigError
from tower.policy import STANDARD, Policy, load_policies
from tower.schema import Seconds, Strict, build, read_yaml

DEFAULT_HOME = Path("~/.gridtower")


class ApiSettings(Strict):
    bind: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    #: The URL pilots use to reach the API; derived from bind and port when unset.
    url: str | None = None


class LoopSettings(Strict):
    #: Pause between two cycles of each loop.
    interval: Seconds = Field(default=5, ge=0)
    #: Jobs the matchmaker publishes per cycle at most.
    batch_size: int = Field(default=2000, gt=0)
    #: A job left assigned this long (a crash or a broker outage before the confirm), or
    #: queued this long while its broker queue is empty, is published again.
    republish_after: Seconds = Field(default=60, gt=0)


class MonitorSettings(Strict):
    #: An attempt whose last heartbeat is older than this is lost.
    heartbeat_timeout: Seconds = Field(default=600, gt=0)
    #: How often pilots send a heartbeat (handed to each pilot).
    heartbeat_interval: Seconds = Field(default=60, gt=0)
    #: A job queued at a site this long without a pilot claiming it goes back to the
    #: retry policy (class claim_timeout), to run elsewhere.
    claim_timeout: Seconds = Field(default=4 * 3600, gt=0)


class StorageSettings(Strict):
    #: Named destinations: `local:/path` (more schemes come with more transfer backends).
    destinations: dict[str, str] = Field(default_factory=dict)
    #: Destinations a production uses when it names none.
    default: list[str] = Field(default_factory=list)
    #: Failed copies are retried after this, doubling per try up to an hour.
    retry_delay: Seconds = Field(default=30, gt=0)

    @field_validator("destinations")
    @classmethod
    def _schemes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if ":" not in url:
                raise ValueError(f"destination {name!r}: expected 'local:/path', got {url!r}")
        return value


class RetrySettings(Strict):
    #: The tower's own retry policies: a YAML file (whose `policies` key maps names to
    #: policies) or such a mapping inline. They join the shipped ones (tower/policies.yaml).
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
    #: Every retry policy by name: the shipped ones and the tower's own.
    policies: dict[str, Policy]
    sites: dict[str, SiteConfig]

    @property
    def api_url(self) -> str:
        return self.api.url or f"http://{self.api.bind}:{self.api.port}"


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
        "destinations": {name: _resolve_local(url, home)
                         for name, url in raw.storage.destinations.items()},
    })
    for name in storage.default:
        if name not in storage.destinations:
            raise ConfigError(f"{path}: storage.default: {name!r} is not a destination "
                              f"(known: {', '.join(storage.destinations) or 'none'})",
                              field="storage.default")
    policies = load_policies(raw.retry.policies, home)
    if raw.retry.policy not in policies:
        raise ConfigError(f"{path}: retry.policy: no policy named {raw.retry.policy!r} "
                          f"(known: {', '.join(sorted(policies))})", field="retry.policy")
    values: dict[str, Any] = {
        "path": path, "home": home, "database_url": _resolve_sqlite(database, home),
        "broker_url": broker, "broker_options": raw.broker_options,
        "api": raw.api,
        "loops": raw.loops, "monitor": raw.monitor, "storage": storage,
        "retry": raw.retry, "health": raw.health, "policies": policies,
        "sites": load_sites(_resolve(raw.sites, home)),
    }
    values.update(overrides)
    return TowerConfig(**values)


def _resolve(value: str, home: Path) -> Path:
    return (home / Path(value).expanduser()).resolve()


def _resolve_local(url: str, home: Path) -> str:
    scheme, _, rest = url.partition(":")
    return f"local:{_resolve(rest, home)}" if scheme == "local" else url


def _resolve_sqlite(url: str, home: Path) -> str:
    # a relative SQLite path is relative to the config file, not to the caller's cwd
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(_resolve(url[len(prefix):], home))
    return url
