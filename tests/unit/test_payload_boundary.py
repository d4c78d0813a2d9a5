"""The slot's exception boundary: whatever a claim holds, its payload ends in a report."""

from __future__ import annotations

import sys
from pathlib import Path

from pilots.payload import Payload


def claim(**changes: object) -> dict[str, object]:
    base = {"job": 7, "attempt": 2, "production": "toy", "variables": {},
            "command": [sys.executable, "-c", "pass"], "steering": {}, "environment": {},
            "outputs": ["*.out"], "walltime": 60}
    return {**base, **changes}


def test_an_unexpected_error_ends_the_attempt_as_setup_and_cleans_the_slot(
        tmp_path: Path) -> None:
    # a steering text that is not text: the renderer fails with a TypeError
    payload = Payload(claim(steering={"steering.json": 5}), {}, tmp_path / "slot-0",
                      tmp_path / "storage")
    report = payload.run()
    assert report["ending"] == "setup" and report["outputs"] == []
    assert "the pilot could not run the job" in report["reason"]
    assert len(report["reason"]) <= 500
    # the slot's dir is free for the next payload; the failed one is kept aside
    assert not (tmp_path / "slot-0").exists() and (tmp_path / "7.2").is_dir()


def test_a_payload_after_a_failed_one_runs_in_the_same_slot(tmp_path: Path) -> None:
    Payload(claim(environment={"BAD=NAME": "x"}), {}, tmp_path / "slot-0",
            tmp_path / "storage").run()
    report = Payload(claim(job=8), {}, tmp_path / "slot-0", tmp_path / "storage").run()
    assert report["ending"] == "finished" and report["exit_code"] == 0
