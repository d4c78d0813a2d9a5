"""The tower's logging, as tower.yaml's `logging` section says (through logging.dictConfig),
and the job fields every log line about a job carries.

Default (no section): warnings and worse on stderr as text, as before the section existed.
A line about a job carries `production`, `job` and `attempt`: given at the call
(`log.warning(..., extra=about(...))`) or set for a stretch of work with
`with job_context(...)` (a context variable, so each thread and each request has its own).
Text lines show them before the message (`production=toy job=3 attempt=1 ...`); JSON lines
have them as keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sites.schema import Strict

#: What a line about a job carries.
JOB_KEYS = ("production", "job", "attempt")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(job_fields)s%(message)s"
Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: Loggers quieter than the root unless tower.yaml says otherwise: broker trouble is
#: reported once by gridtower itself, without pika's tracebacks.
QUIET = {"pika": "CRITICAL"}

_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("job", default=None)


class LogFile(Strict):
    """A log file, rotated by size: `path` (relative to tower.yaml), then `path.1` ..."""

    path: Path
    #: Bytes a file may reach before it is rotated.
    max_bytes: int = Field(default=10 * 2**20, gt=0)
    #: Rotated files kept.
    backups: int = Field(default=5, ge=0, le=1000)


class LoggingSettings(Strict):
    """`logging` in tower.yaml."""

    #: The level of every logger not named in `loggers`.
    level: Level = "WARNING"
    #: Levels of single loggers, e.g. {tower.loops.stager: DEBUG, pika: WARNING}.
    loggers: dict[str, Level] = Field(default_factory=dict)
    #: `text` lines, or `json`: one JSON object a line, for a log collector.
    format: Literal["text", "json"] = "text"
    #: Absent: stderr.
    file: LogFile | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("loggers", mode="before")
    @classmethod
    def _upper_all(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: level.upper() if isinstance(level, str) else level
                    for name, level in value.items()}
        return value


def about(production: str | int | None, job: int | None, attempt: int | None
          ) -> dict[str, Any]:
    """The `extra` of a log call about a job."""
    return {"production": production, "job": job, "attempt": attempt}


@contextlib.contextmanager
def job_context(production: str | int | None, job: int | None,
                attempt: int | None) -> Iterator[None]:
    """Every line logged inside (in this thread or task) is about this job."""
    token = _job.set(about(production, job, attempt))
    try:
        yield
    finally:
        _job.reset(token)


class JobFields(logging.Filter):
    """Gives every record `production`, `job` and `attempt` (None when not about a job), and
    `job_fields`, their text form."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _job.get() or {}
        for key in JOB_KEYS:
            if getattr(record, key, None) is None:
                setattr(record, key, context.get(key))
        record.job_fields = "".join(f"{key}={getattr(record, key)} " for key in JOB_KEYS
                                    if getattr(record, key) is not None)
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the job's
    keys when the line is about a job, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in JOB_KEYS:
            if getattr(record, key, None) is not None:
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def dict_config(settings: LoggingSettings, verbose: bool = False) -> dict[str, Any]:
    """The logging.dictConfig document of `settings` (`verbose`: everything at DEBUG)."""
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    if settings.file is not None:
        handler = {"class": "logging.handlers.RotatingFileHandler",
                   "filename": str(settings.file.path), "maxBytes": settings.file.max_bytes,
                   "backupCount": settings.file.backups, "encoding": "utf-8"}
    handler.update(formatter=settings.format, filters=["job"])
    levels = {**QUIET, **settings.loggers}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job": {"()": JobFields}},
        "formatters": {"text": {"format": TEXT}, "json": {"()": JsonLines}},
        "handlers": {"main": handler},
        "root": {"level": "DEBUG" if verbose else settings.level, "handlers": ["main"]},
        "loggers": {name: {"level": level} for name, level in levels.items()},
    }


def configure(settings: LoggingSettings, verbose: bool = False) -> None:
    """Log as `settings` say from now on (the file's directory is made if missing)."""
    if settings.file is not None:
        settings.file.path.parent.mkdir(parents=True, exist_ok=True)
    logging.config.dictConfig(dict_config(settings, verbose))
