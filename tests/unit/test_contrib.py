"""contrib/systemd: the units as systemd reads them (nginx's and gunicorn's configurations
are run for real by tests/integration/test_fleet.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def test_the_systemd_units_have_no_unknown_or_bad_setting(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = sorted((CONTRIB / "systemd").iterdir())
    assert {unit.name for unit in units} >= {"tower-api@.service", "tower-loops@.service"}
    venv = Path(sys.executable).parent
    for unit in units:
        # the programs they start must exist: this venv's in place of /opt/gridtower's
        text = unit.read_text().replace("/opt/gridtower/venv/bin/", f"{venv}/")
        (tmp_path / unit.name).write_text(text.replace("/opt/gridtower/contrib/", f"{CONTRIB}/"))
    done = subprocess.run([analyze, "verify", "--man=no",
                           *(str(tmp_path / unit.name) for unit in units)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
