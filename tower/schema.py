"""Reading YAML into typed, frozen settings, with errors that name the file and the key."""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from pilots.units import parse_duration, parse_memory
from tower.errors import ConfigError, GridtowerError

Model = TypeVar("Model", bound=BaseModel)

#: Seconds, written as 3600 or "1h".
Seconds = Annotated[int, BeforeValidator(parse_duration)]
#: Megabytes, written as 2000 or "2GB".
Megabytes = Annotated[int, BeforeValidator(parse_memory)]


class Strict(BaseModel):
    """Base of every settings model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: Path, error: type[GridtowerError] = ConfigError) -> Any:
    """Parse a YAML file; a missing file or a syntax error names the file (and line)."""
    return _parse(path, yaml.safe_load, error)


def read_yaml_documents(path: Path, error: type[GridtowerError] = ConfigError) -> list[Any]:
    """Every non-empty YAML document of a file (`---` separated)."""
    return _parse(path, _documents, error)


def yaml_documents(text: str, source: str,
                   error: type[GridtowerError] = ConfigError) -> list[Any]:
    """Every non-empty YAML document of `text`, which came from `source` (for errors)."""
    return _parse_text(text, source, _documents, error)


def _documents(text: str) -> list[Any]:
    return [document for document in yaml.safe_load_all(text) if document is not None]


def _parse(path: Path, parse: Callable[[str], Any], error: type[GridtowerError]) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    return _parse_text(text, str(path), parse, error)


def _parse_text(text: str, source: str, parse: Callable[[str], Any],
                error: type[GridtowerError]) -> Any:
    try:
        return parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{source}{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"
                    ) from exc


def build(
    model: type[Model], data: Any, source: str, prefix: str = "",
    error: type[GridtowerError] = ConfigError,
) -> Model:
    """Validate `data` into `model`; the first problem becomes `error` naming source and key."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(str(part) for part in (*filter(None, [prefix]), *problem["loc"]))
        message = _describe(problem)
        raise error(f"{source}: {key or '(top level)'}: {message}", field=key or None) from exc


def _describe(problem: Any) -> str:
    kind = problem["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(problem["msg"])
    # pydantic prefixes messages of our own validators with "Value error, "
    return message.removeprefix("Value error, ")


def require_private(path: Path, key: str, source: str | Path, what: str = "a private key"
                    ) -> None:
    """Refuse a secret file others may read, as ssh does a key; ConfigError names `key`."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: {path}: {exc.strerror}", field=key) from None
    if mode & 0o077:
        raise ConfigError(f"{source}: {key}: {path} has mode {mode:04o}: {what} must be "
                          f"readable by its owner alone (chmod 600 {path})", field=key)


def printable(text: str, keep: str = "") -> str:
    """`text` without control characters (NUL, escape sequences, newlines unless in `keep`)
    or lone surrogates, which no database column or log line should carry."""
    return "".join(char for char in text if char in keep
                   or unicodedata.category(char) not in ("Cc", "Cs"))


#: A caller's free text of one line (a reason, a host name), control characters stripped.
Line = Annotated[str, AfterValidator(printable)]
#: A caller's free text of many lines (a log tail): newlines and tabs kept.
Text = Annotated[str, AfterValidator(lambda text: printable(text, keep="\n\t"))]
