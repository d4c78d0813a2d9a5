"""tower.yaml's `logging` section: validated, applied with logging.dictConfig, a file
rotated by size, text or JSON lines, and the job's fields on every line about a job."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tower import logs
from tower.config import load_config
from tower.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """dictConfig replaces the root's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


def with_logging(tower_yaml: Path, section: object) -> Path:
    config = yaml.safe_load(tower_yaml.read_text())
    config["logging"] = section
    tower_yaml.write_text(yaml.safe_dump(config))
    return tower_yaml


def test_the_default_is_warnings_on_stderr_as_text(tower_yaml: Path) -> None:
    settings = load_config(tower_yaml).logging
    document = logs.dict_config(settings)
    assert document["root"]["level"] == "WARNING"
    assert document["handlers"]["main"]["class"] == "logging.StreamHandler"
    assert document["handlers"]["main"]["formatter"] == "text"
    assert document["loggers"]["pika"] == {"level": "CRITICAL"}
    assert logs.dict_config(settings, verbose=True)["root"]["level"] == "DEBUG"


@pytest.mark.parametrize(("section", "field"), [
    ({"level": "LOUD"}, "logging.level"),
    ({"loggers": {"tower.loops": "chatty"}}, "logging.loggers.tower.loops"),
    ({"format": "xml"}, "logging.format"),
    ({"file": {"path": "t.log", "max_bytes": 0}}, "logging.file.max_bytes"),
    ({"file": {"path": "t.log", "rotate": True}}, "logging.file.rotate"),
])
def test_a_bad_logging_section_is_refused_naming_the_file_and_key(
        tower_yaml: Path, section: object, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(with_logging(tower_yaml, section))
    assert str(tower_yaml) in str(refused.value) and field in str(refused.value)


def test_a_json_log_file_rotates_and_lines_about_a_job_carry_its_keys(
        tower_yaml: Path) -> None:
    config = load_config(with_logging(tower_yaml, {
        "level": "info", "loggers": {"noisy": "error"}, "format": "json",
        "file": {"path": "logs/tower.log", "max_bytes": 2000, "backups": 2}}))
    path = tower_yaml.parent / "logs" / "tower.log"
    assert config.logging.file is not None and config.logging.file.path == path
    logs.configure(config.logging)
    log = logging.getLogger("tower.test")
    with logs.job_context("toy", 7, 2):
        log.info("inside a job's stretch of work")
    log.warning("given at the call", extra=logs.about("other", 8, 1))
    log.info("about no job")
    logging.getLogger("noisy").warning("not written: below the logger's level")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line.get("production"), line.get("job"), line.get("attempt"), line["message"])
            for line in lines] == [("toy", 7, 2, "inside a job's stretch of work"),
                                   ("other", 8, 1, "given at the call"),
                                   (None, None, None, "about no job")]
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "tower.test"
    for number in range(100):  # well past 2000 bytes: rotated, two backups kept
        log.info("line %d", number)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tower.log", "tower.log.1",
                                                             "tower.log.2"]
    assert all(len(p.read_bytes()) <= 2000 for p in path.parent.iterdir())


def test_text_lines_show_the_jobs_fields_before_the_message(tower_yaml: Path) -> None:
    config = load_config(with_logging(tower_yaml, {"level": "INFO",
                                                   "file": {"path": "tower.log"}}))
    logs.configure(config.logging)
    log = logging.getLogger("tower.test")
    with logs.job_context("toy", 7, 2):
        log.info("staged")
    log.info("idle")
    first, second = (tower_yaml.parent / "tower.log").read_text().splitlines()
    assert first.endswith(" INFO tower.test: production=toy job=7 attempt=2 staged")
    assert second.endswith(" INFO tower.test: idle")
