"""Durations and memory sizes as people write them in YAML ("90m", "2GB")."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_MEGABYTES = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_duration(value: object) -> int:
    """Seconds from an int/float of seconds or a string such as "90s", "10m", "1h30m", "2d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 3600, '90m' or '1h30m'")
    if isinstance(value, int | float):
        return _whole(value, value)
    text = str(value).strip().replace(" ", "")
    if text.isascii() and text.isdigit():
        return int(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
        raise ValueError(f"expected a duration such as 3600, '90m' or '1h30m', got {value!r}")
    return _whole(sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts), value)


def parse_memory(value: object) -> int:
    """Megabytes from an int of MB or a string such as "512MB", "2GB", "2G", "1.5GiB"."""
    if isinstance(value, bool):
        raise ValueError("expected a memory size such as 2000 (MB) or '2GB'")
    if isinstance(value, int | float):
        return _whole(value, value)
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"expected a memory size such as 2000 (MB) or '2GB', got {value!r}")
    number, unit = match.groups()
    prefix = (unit or "").upper()[:1] if (unit or "").upper() != "B" else "K"
    factor = 1 / (1024 * 1024) if (unit or "").upper() == "B" else _MEGABYTES[prefix]
    return _whole(float(number) * factor, value)


def _whole(number: float, value: object) -> int:
    """`number` as an int; ValueError (not OverflowError) for infinity and NaN."""
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return int(number)
