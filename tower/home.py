"""`tower init DIR`: a working starter set — config, a local site, an example production."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from string import Template

from tower.errors import Conflict

#: Starter file -> is it a template with ${home} in it?
STARTER = {"tower.yaml": False, "sites.yaml": True, "production.yaml": False, "toysim.py": False,
           "toyreco.py": False}


def init(directory: Path, force: bool = False) -> list[Path]:
    """Write the starter files into `directory`; refuse to overwrite unless `force`."""
    directory = directory.expanduser().resolve()
    targets = [directory / name for name in STARTER]
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        raise Conflict(f"{existing[0]} exists already (use --force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    starter = resources.files("tower") / "starter"
    for name, templated in STARTER.items():
        text = (starter / name).read_text()
        if templated:
            text = Template(text).safe_substitute(home=str(directory))
        (directory / name).write_text(text)
    for script in ("toysim.py", "toyreco.py"):
        shutil.copymode(str(starter / script), directory / script)
    return targets
