"""Broker settings: URLs and options checked up front, secrets kept off command lines and
out of messages, reconnect delays that grow."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from pilots.amqp import connection_parameters, queue_arguments
from pilots.backoff import Backoff
from pilots.main import parser, settings_from
from pilots.urls import redact
from tests.conftest import write_home
from tower.config import load_config
from tower.errors import ConfigError
from tower.loops.factory import pilot_request
from tower.runtime import Runtime

URL = "amqp://producer:s3cret-pw@broker.example.org:5672/production"


@pytest.mark.parametrize(("url", "shown"), [
    (URL, "amqp://producer:***@broker.example.org:5672/production"),
    ("amqps://u:p@[::1]:5671/v", "amqps://u:***@[::1]:5671/v"),
    ("amqp://127.0.0.1/%2F", "amqp://127.0.0.1/%2F"),
    ("database", "database"),
])
def test_a_password_never_shows(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_amqps_verifies_the_broker_and_its_host_name() -> None:
    parameters = connection_parameters("amqps://u:p@broker.example.org/v")
    assert parameters.port == 5671
    context = parameters.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert parameters.ssl_options.server_hostname == "broker.example.org"
    assert connection_parameters("amqp://u:p@h/v").ssl_options is None


def test_heartbeat_and_timeouts_have_defaults_the_url_may_override() -> None:
    assert connection_parameters("amqp://h/v").heartbeat == 30
    assert connection_parameters("amqp://h/v?heartbeat=5").heartbeat == 5


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        connection_parameters("amqp://u:hunter2@h/v?heartbeat=soon")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_queue_types() -> None:
    assert queue_arguments("classic") == {}
    assert queue_arguments("quorum") == {"x-queue-type": "quorum"}
    with pytest.raises(ValueError, match="queue_type"):
        queue_arguments("stream")


def test_backoff_doubles_to_a_ceiling_and_measures_the_outage() -> None:
    backoff = Backoff(initial=0.01, maximum=0.04)
    assert backoff.due() and backoff.outage() == 0
    assert [backoff.failed() for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert not backoff.due()
    time.sleep(0.05)
    assert backoff.due() and backoff.outage() >= 0.05
    backoff.succeeded()
    assert backoff.outage() == 0 and backoff.failed() == 0.01


def test_unknown_broker_options_are_refused_naming_file_and_key(tmp_path: Path) -> None:
    config = write_home(tmp_path, "sqlite:///x.db", broker=URL,
                        broker_options={"queue_type": "stream"})
    with pytest.raises(ConfigError) as caught:
        Runtime.open(load_config(config))
    assert str(config) in str(caught.value) and "broker_options.queue_type" in str(caught.value)

    config = write_home(tmp_path, "sqlite:///x.db", broker_options={"exchange": "x"})
    with pytest.raises(ConfigError, match="broker_options.exchange: the database queue"):
        Runtime.open(load_config(config))


def test_an_unknown_broker_scheme_suggests_the_known_ones(tmp_path: Path) -> None:
    config = write_home(tmp_path, "sqlite:///x.db", broker="amqpx://h/v")
    with pytest.raises(ConfigError, match="did you mean 'amqp"):
        Runtime.open(load_config(config))


def test_the_pilot_gets_the_broker_url_in_its_environment_not_its_argv(tmp_path: Path) -> None:
    config = write_home(tmp_path, "sqlite:///x.db", broker=URL,
                        broker_options={"queue_type": "quorum"})
    runtime = Runtime.open(load_config(config), create=False)  # opening does not connect
    site = runtime.config.sites["local"]
    request = pilot_request(runtime, site, "default", "p1")
    assert not any("s3cret" in part for part in request.argv)
    assert request.argv[request.argv.index("--source") + 1] == "amqp"
    assert "queue_type=quorum" in request.argv
    assert request.environment == {"GRIDTOWER_BROKER_URL": URL}


def test_a_site_may_reach_the_broker_by_another_address(tmp_path: Path) -> None:
    outside = "amqps://pilot:pw@broker.example.org/production"
    config = write_home(tmp_path, "sqlite:///x.db", {"broker_url": outside}, broker=URL)
    runtime = Runtime.open(load_config(config), create=False)
    request = pilot_request(runtime, runtime.config.sites["local"], "default", "p1")
    assert request.environment == {"GRIDTOWER_BROKER_URL": outside}


def test_the_pilot_gets_its_memory_settings_only_when_a_site_sets_them(tmp_path: Path) -> None:
    shaped = {"pilot": {"slots": 2, "cores": 4, "memory": "4GB", "memory_tolerance": 0.25}}
    config = write_home(tmp_path, "sqlite:///x.db", shaped,
                        more_sites={"plain": {"pilot": {"slots": 2}}})
    runtime = Runtime.open(load_config(config), create=False)
    request = pilot_request(runtime, runtime.config.sites["local"], "default", "p1")
    settings = settings_from(parser().parse_args(request.argv[3:]))
    assert (settings.slots, settings.cores, settings.memory, settings.memory_tolerance,
            settings.memory_watch) == (2, 4, 4096, 0.25, "auto")
    # a site without them gives a command line pilots older than them understand too
    plain = pilot_request(runtime, runtime.config.sites["plain"], "default", "p1").argv
    assert not any(part.startswith("--memory") for part in plain)
