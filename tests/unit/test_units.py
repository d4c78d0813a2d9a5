from __future__ import annotations

import pytest

from pilots.units import parse_duration, parse_memory


@pytest.mark.parametrize(("text", "seconds"), [
    (3600, 3600), ("3600", 3600), ("90s", 90), ("10m", 600), ("2h", 7200),
    ("1h30m", 5400), ("1d", 86400), (1.5, 1),
])
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "", "1h 2q", True])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "megabytes"), [
    (2000, 2000), ("512MB", 512), ("2GB", 2048), ("2G", 2048), ("1.5GiB", 1536),
    ("1TB", 1048576), ("2048K", 2),
])
def test_memory(text: object, megabytes: int) -> None:
    assert parse_memory(text) == megabytes


@pytest.mark.parametrize("text", ["lots", "2 parsecs", False])
def test_bad_memory_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("59", 59 * 60), ("4:05", 245), ("1:02:03", 3723), ("2-03:00:00", 183600),
    ("2-03", 183600), ("1-00:30", 88200), ("UNLIMITED", None), ("INVALID", None), ("", None)])
def test_slurm_times(text: str, seconds: float | None) -> None:
    from pilots.batchenv import parse_slurm_time

    assert parse_slurm_time(text) == seconds
