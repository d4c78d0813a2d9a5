"""Reading YAML into typed, frozen settings, with errors that name the file and the key."""

from __future__ import annotations

import functools
import json
import math
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    model_validator,
)

from pilots.units import parse_duration, parse_memory
from sites.errors import ConfigError, GridtowerError

Model = TypeVar("Model", bound=BaseModel)

#: The largest whole number any input may hold: what a signed 64-bit column stores.
MAX_INTEGER = 2**63 - 1
#: The largest id, count or code the database keeps in a 32-bit column (ids of jobs and
#: messages, attempt numbers, exit codes, priorities, events of one job).
MAX_ID = 2**31 - 1
#: The deepest nesting of lists and mappings in a JSON body or a YAML document.
MAX_DEPTH = 32
#: The most values (scalars, lists, mappings; a YAML alias counts each time it is used) in
#: one document: a heartbeat of 10,000 jobs holds 30,001.
MAX_NODES = 250_000
#: The longest duration a setting may hold (a year): the loops add durations to times.
MAX_SECONDS = 366 * 86400
#: The longest YAML text read (a production file, a configuration).
MAX_YAML_CHARACTERS = 2_000_000
#: The largest memory size (1 PiB in MB).
MAX_MEGABYTES = 1024**3
#: The most cores a job or a pilot may have: more than any batch request of one pilot.
MAX_CORES = 100_000

#: A whole number of a 32-bit column.
Int32 = Annotated[int, Ge(-MAX_ID - 1), Le(MAX_ID)]
#: An id of a 32-bit column.
Id = Annotated[int, Ge(0), Le(MAX_ID)]
#: Seconds, written as 3600 or "1h".
Seconds = Annotated[int, BeforeValidator(parse_duration), Le(MAX_SECONDS)]
#: Megabytes, written as 2000 or "2GB".
Megabytes = Annotated[int, BeforeValidator(parse_memory), Le(MAX_MEGABYTES)]


def _count(value: Any) -> Any:
    # YAML reads `yes` as true, which int() would take for 1
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number of cores, got {value!r}")
    return value


#: Cores of a job or a pilot.
Cores = Annotated[int, BeforeValidator(_count), Ge(1), Le(MAX_CORES)]


class OutOfBounds(ValueError):
    """A value beyond what the tower accepts anywhere; `path` is where it is (keys and
    list positions)."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.path = path


def bounded(value: Any, path: tuple[str | int, ...] = ()) -> Any:
    """`value` itself, once every part of it is proved within bounds: nesting, count of
    values, whole numbers of 63 bits, finite numbers, no NUL in a string (PostgreSQL
    cannot store one, and no name or path needs one). Raises OutOfBounds naming where."""
    if not _within(value):
        _locate(value, path)
    return value


def _within(value: Any, depth: int = 0) -> bool:
    """Whether `value` is plainly within bounds: the fast pass every body and model takes,
    on exact types and without paths (anything else is left to `_locate`)."""
    stack = [(value, depth)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        kind = type(item)
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            return False
        if kind is str:
            if "\x00" in item:
                return False
        elif kind is int:
            if not -MAX_INTEGER <= item <= MAX_INTEGER:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict:
            for key, entry in item.items():
                stack += ((key, depth), (entry, depth + 1))
        elif kind is list or kind is tuple:
            stack += ((entry, depth + 1) for entry in item)
        elif not (kind is bool or item is None or isinstance(item, BaseModel)):
            return False  # a subclass or a set: the careful pass decides
    return True


def _locate(value: Any, path: tuple[str | int, ...]) -> None:
    """Raise OutOfBounds naming where `value` breaks a bound, if it does."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    nodes = 0
    while stack:
        item, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise OutOfBounds(f"more than {MAX_NODES} values", path)
        if len(where) - len(path) > MAX_DEPTH:
            raise OutOfBounds(f"nested deeper than {MAX_DEPTH}", where)
        if isinstance(item, str):
            if "\x00" in item:
                raise OutOfBounds("a NUL character is not allowed", where)
        elif isinstance(item, bool) or item is None or isinstance(item, BaseModel):
            continue  # a model checked its own fields
        elif isinstance(item, int):
            if abs(item) > MAX_INTEGER:
                raise OutOfBounds(f"whole number out of range (at most {MAX_INTEGER} in "
                                  "size)", where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise OutOfBounds(f"{item} is not a finite number", where)
        elif isinstance(item, dict):
            for key, entry in item.items():
                # a bad key is named by its mapping: the key itself may be what is wrong
                stack += [(key, where), (entry, (*where, str(key)))]
        elif isinstance(item, list | tuple | set | frozenset):
            stack += [(entry, (*where, position)) for position, entry in enumerate(item)]


class Strict(BaseModel):
    """Base of every settings and request model: unknown keys are errors, values are
    immutable, and every value is `bounded`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _bounded(self) -> Strict:
        # after coercion: 1e300 given for an int field is a whole number by then
        if not _within(self.__dict__, depth=-1):
            for name, value in self:
                bounded(value, (name,))
        return self


def json_document(data: bytes, source: str, error: type[GridtowerError] = ConfigError) -> Any:
    """Parse JSON `data` (from `source`, for errors) and prove it `bounded`."""
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH}") from None
    except ValueError as exc:  # also bad UTF-8 and numbers of more than 4300 digits
        raise error(f"{source}: invalid JSON: {exc}") from None
    return checked(document, source, error)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def checked(document: Any, source: str, error: type[GridtowerError] = ConfigError,
            path: tuple[str | int, ...] = ()) -> Any:
    """`document` (found at `path`) proved `bounded`, or `error` naming source and where."""
    try:
        return bounded(document, path)
    except OutOfBounds as exc:
        key = ".".join(map(str, exc.path))
        raise error(f"{source}: {key or '(top level)'}: {exc}", field=key or None) from None


def _checked_documents(documents: list[Any], source: str, error: type[GridtowerError]
                       ) -> list[Any]:
    """`documents` of one file proved `bounded` together (aliases count in every one);
    the error names the document by its number and the key within it."""
    try:
        return bounded(documents)  # type: ignore[no-any-return]
    except OutOfBounds as exc:
        number, *inner = exc.path or (None,)
        where = f"{source}: document {number + 1}" if isinstance(number, int) else source
        key = ".".join(map(str, inner))
        raise error(f"{where}: {key or '(top level)'}: {exc}", field=key or None) from None


def read_yaml(path: Path, error: type[GridtowerError] = ConfigError) -> Any:
    """Parse a YAML file; a missing file or a syntax error names the file (and line)."""
    return checked(_parse(path, yaml.safe_load, error), str(path), error)


def read_yaml_documents(path: Path, error: type[GridtowerError] = ConfigError) -> list[Any]:
    """Every non-empty YAML document of a file (`---` separated)."""
    return _checked_documents(_parse(path, _documents, error), str(path), error)


def yaml_documents(text: str, source: str,
                   error: type[GridtowerError] = ConfigError) -> list[Any]:
    """Every non-empty YAML document of `text`, which came from `source` (for errors)."""
    return _checked_documents(_parse_text(text, source, _documents, error), source, error)


def _documents(text: str) -> list[Any]:
    return [document for document in yaml.safe_load_all(text) if document is not None]


def read_text(path: Path, error: type[GridtowerError] = ConfigError) -> str:
    """A text file's content (UTF-8); a missing file or other bytes become `error`."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _parse(path: Path, parse: Callable[[str], Any], error: type[GridtowerError]) -> Any:
    return _parse_text(read_text(path, error), str(path), parse, error)


def _parse_text(text: str, source: str, parse: Callable[[str], Any],
                error: type[GridtowerError]) -> Any:
    if len(text) > MAX_YAML_CHARACTERS:
        raise error(f"{source}: larger than {MAX_YAML_CHARACTERS} characters")
    try:
        document = parse(text)
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{source}{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"
                    ) from exc
    return document


def build(
    model: type[Model], data: Any, source: str, prefix: str = "",
    error: type[GridtowerError] = ConfigError,
) -> Model:
    """Validate `data` into `model`; the first problem becomes `error` naming source and key."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problem = exc.errors()[0]
        cause = problem.get("ctx", {}).get("error")
        inner = cause.path if isinstance(cause, OutOfBounds) else ()
        key = ".".join(str(part) for part in (*filter(None, [prefix]), *problem["loc"],
                                               *inner))
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
    problem = private_problem(path, what)
    if problem is not None:
        raise ConfigError(f"{source}: {key}: {problem}", field=key)


def private_problem(path: Path, what: str = "a private key") -> str | None:
    """Why the secret file at `path` will not do (missing, or others may read it); None
    when it will."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if mode & 0o077:
        return (f"{path} has mode {mode:04o}: {what} must be readable by its owner alone "
                f"(chmod 600 {path})")
    return None


def printable(text: str, keep: str = "") -> str:
    """`text` without control characters (NUL, escape sequences, newlines unless in `keep`)
    or lone surrogates, which no database column or log line should carry."""
    if text.isascii():
        # the common case, at C speed (a pilot's report holds many strings): in ASCII the
        # characters str.isprintable refuses are exactly the controls (Cc)
        return text if text.isprintable() else text.translate(_ascii_controls(keep))
    return "".join(char for char in text if char in keep
                   or unicodedata.category(char) not in ("Cc", "Cs"))


@functools.cache
def _ascii_controls(keep: str) -> dict[int, None]:
    """A str.translate table removing the ASCII control characters not in `keep`."""
    return {code: None for code in (*range(32), 127) if chr(code) not in keep}


#: A caller's free text of one line (a reason, a host name), control characters stripped.
Line = Annotated[str, AfterValidator(printable)]
#: A caller's free text of many lines (a log tail): newlines and tabs kept.
Text = Annotated[str, AfterValidator(lambda text: printable(text, keep="\n\t"))]
