"""The pilot's settings: command line over YAML over defaults, each error naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilots.client import TowerClient
from pilots.main import parser, settings_from
from pilots.sources import open_source

BASE = ["--tower", "http://127.0.0.1:1", "--site", "s", "--pilot-id", "p",
        "--scratch", "/tmp/scratch", "--storage", "/tmp/storage"]


def settings(*args: str):  # type: ignore[no-untyped-def]
    return settings_from(parser().parse_args([*BASE, *args]))


def test_source_options_come_from_yaml_and_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "pilot.yaml"
    config.write_text("source: amqp\nsource_options: {queue_type: quorum, ca_file: /a}\n")
    got = settings("--config", str(config), "--source-option", "ca_file=/b")
    assert got.source == "amqp"
    assert got.source_options == {"queue_type": "quorum", "ca_file": "/b"}
    assert got.broker_queue == "s.default"


@pytest.mark.parametrize(("args", "message"), [
    (["--source-option", "novalue"], "expected KEY=VALUE"),
    (["--walltime", "soon"], "walltime"),
    (["--memory-tolerance", "-0.5"], "memory_tolerance: expected a fraction from 0 to 10"),
    (["--memory", "0"], "memory: expected a whole number above 0"),
])
def test_bad_settings_name_the_key(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(*args)


def test_sources_check_their_options_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    client = TowerClient("http://127.0.0.1:1", "p")
    with pytest.raises(ValueError, match="unknown message source 'kafka'"):
        open_source("kafka", client, "s.default", {}, 10)
    with pytest.raises(ValueError, match="the http source takes none"):
        open_source("http", client, "s.default", {"queue_type": "quorum"}, 10)
    monkeypatch.delenv("GRIDTOWER_BROKER_URL", raising=False)
    with pytest.raises(ValueError, match=r"\$GRIDTOWER_BROKER_URL"):
        open_source("amqp", client, "s.default", {}, 10)
    monkeypatch.setenv("GRIDTOWER_BROKER_URL", "amqp://u:p@127.0.0.1:1/v")
    with pytest.raises(ValueError, match="source option 'prefetch': unknown"):
        open_source("amqp", client, "s.default", {"prefetch": "5"}, 10)


def test_a_pilot_has_as_many_slots_as_cores_unless_told(tmp_path: Path) -> None:
    assert settings("--cores", "8").slots == 8
    assert settings("--cores", "8", "--slots", "2").slots == 2
    config = tmp_path / "pilot.yaml"
    config.write_text("memory: 4000\nmemory_tolerance: 0.25\nmemory_watch: poll\n")
    got = settings("--config", str(config))
    assert (got.memory, got.memory_tolerance, got.memory_watch) == (4000, 0.25, "poll")
    config.write_text("memory_tolerance: lots\n")
    with pytest.raises(ValueError, match="memory_tolerance: expected a fraction"):
        settings("--config", str(config))
