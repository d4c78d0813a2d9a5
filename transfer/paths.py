"""Paths built from outside input, proved to stay under their root before anything opens them.

A pilot runs beside a payload that can read its credential, so a name or path
it reports is an attacker's string: `../../x`, `/etc/passwd`, a name with a
newline, a symbolic link in its own stage dir pointing at the tower's keys.
Every place that joins such a string to a root goes through `inside` (a local
root, symlinks followed) or `plain_name` (one file name), here in one place.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePath

from transfer.base import checked_path
from transfer.errors import OutsideRoot, TransferError

#: Bytes a file name may take (NAME_MAX of Linux file systems).
NAME_MAX = 255


def name_problem(name: str) -> str | None:
    """Why `name` is not one plain file name, or None: no `/`, not `.` or `..`, no control
    characters (NUL, newline, ...), at most NAME_MAX bytes in UTF-8."""
    if not name:
        return "an empty name"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        return "control characters in the name"
    if "/" in name:
        return "a '/' in the name; a plain file name is wanted"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if len(name.encode()) > NAME_MAX:
        return f"longer than {NAME_MAX} bytes"
    return None


def plain_name(name: str, where: str) -> str:
    """`name` if it is one plain file name, else OutsideRoot naming `where`."""
    problem = name_problem(name)
    if problem:
        raise OutsideRoot(f"{where}: {name!r}: refused: {problem}")
    return name


def inside(root: Path, relative: str, where: str) -> Path:
    """`root / relative` resolved (symbolic links followed), or OutsideRoot naming `where`
    when `relative` is not a clean relative path or the result leaves `root` (through
    `..`, an absolute path, or a symbolic link that points out)."""
    try:
        clean = checked_path(where, relative)
    except TransferError as exc:
        raise OutsideRoot(str(exc)) from None
    target = (root / clean).resolve()
    require_under(target, root.resolve(), where, relative)
    return target


def require_under(target: PurePath, root: PurePath, where: str, relative: str) -> None:
    """Raise OutsideRoot unless resolved `target` lies under resolved `root` (a remote
    backend resolves both on its server, then asks here)."""
    if not target.is_relative_to(root):
        raise OutsideRoot(f"{where}: {relative!r} leaves its root {root} (resolved to "
                          f"{target}: a symbolic link points out)")
