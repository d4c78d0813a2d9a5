#!/usr/bin/env python3
"""Build a directory image for bubblewrap from this machine's Python, with the toy simulation.

    python3 examples/image.py DIR [--marker TEXT]

The image holds the interpreter (at its own path, and `/usr/bin/python3`), its standard
library without tests, GUIs or installed packages, the shared libraries they load,
a copy of `/opt/toysim/toysim.py`, the mount points bubblewrap needs (`/dev`, `/proc`, `/tmp`),
and a marker file `/.gridtower-image`. Files are hard links to the host's where the file
system allows (an image costs no space), else copies; change an image's file by writing a
new one in its place, never in place, or the host's file changes too.
Standard library only: it runs with the Python it packs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: Parts of the standard library a batch payload does not need.
SKIPPED = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
           "site-packages", "pydoc_data", "unittest"}
MARKER = ".gridtower-image"
LIBRARY = re.compile(r"(/\S+\.so[.\d]*)")


def build(target: Path, marker: str) -> Path:
    """Make the image at `target` (which must not exist); returns it."""
    interpreter = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    target.mkdir(parents=True)
    for mount in ("dev", "proc", "tmp", "usr/bin", "opt/toysim"):
        (target / mount).mkdir(parents=True, exist_ok=True)
    _place(interpreter, target)
    (target / "usr/bin/python3").symlink_to(interpreter)
    for directory, names, files in os.walk(stdlib):
        names[:] = sorted(name for name in names if name not in SKIPPED)
        for name in files:
            if not name.endswith(".exe"):  # compiled modules kept: a payload starts faster
                _place(Path(directory) / name, target)
    libraries = {interpreter, *(stdlib / "lib-dynload").glob("*.so")}
    for path in sorted(_libraries(libraries)):
        _place(path, target)
    # a copy, not a link: the image's software changes apart from the repository's
    shutil.copy2(Path(__file__).with_name("toysim.py"), target / "opt/toysim/toysim.py")
    (target / MARKER).write_text(marker + "\n")
    return target


def _libraries(binaries: set[Path]) -> set[Path]:
    """The shared libraries `binaries` load, as `ldd` finds them (the loader included)."""
    found: set[Path] = set()
    for binary in sorted(binaries):
        listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                                 check=False).stdout
        found.update(Path(match) for match in LIBRARY.findall(listing))
    return found


def _place(source: Path, root: Path) -> None:
    """Put `source` at its own path in the image, and where its links lead."""
    destination = root / str(source).lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists() or destination.is_symlink():
        return
    real = Path(os.path.realpath(source))
    if real != source:
        destination.symlink_to(real)  # an absolute link, resolved in the image's root
        _place(real, root)
        return
    try:
        os.link(real, destination)
    except OSError:
        shutil.copy2(real, destination)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="where to make the image (must not exist)")
    parser.add_argument("--marker", default="toysim image", help="text of /.gridtower-image")
    args = parser.parse_args()
    if args.directory.exists():
        print(f"image.py: {args.directory} exists already", file=sys.stderr)
        return 2
    build(args.directory, args.marker)
    print(f"image built at {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
