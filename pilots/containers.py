"""Container runtimes: how a payload's command is wrapped to run in an image.

A site offers runtimes, each an argv template (no shell: every template argument
stays one argument). Its placeholders are `${image}`, `${work_dir}`, `${input_dir}`
and `${output_dir}`; three arguments are spliced whole, never rendered into a string:
`${binds}` becomes the runtime's `bind` (read-write) or `read_only` template for each
path the payload must see (its work dir read-write, its outputs dir within; each input
file read-only into its `inputs`), `${command}` the payload's rendered command, and
`${environment}` (for a runtime that does not pass the pilot's environment on: podman)
the `environment` template once per variable the payload is given. Inside, the work dir
is INSIDE whatever the site's scratch, so a payload's rendered files are the same
everywhere.

Images: a runtime of kind `path` (bubblewrap, apptainer) runs an image at the site — a
directory or a file — named relative to the site's images root or by an absolute path
under it; one of kind `reference` (podman, shifter) runs an image its registry names.
Nothing in a production's image name leaves the root: no `..`, no NUL, ASCII only, and
the resolved path (links followed) is under the root's.

The sites' config checks templates with `runtime_problem`, the tower checks image names with
`image_problem` at submission, and the pilot wraps and measures with `wrap` and `digest`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from pilots.rendering import identifiers, render

#: Placeholders spliced as whole arguments (lists), and those rendered inside one.
SPLICED = ("binds", "command", "environment")
VARIABLES = ("image", "work_dir", "input_dir", "output_dir")
#: Placeholders of a bind template, and of an environment template.
BIND_VARIABLES = ("source", "target")
ENVIRONMENT_VARIABLES = ("name", "value")
#: The image name a production may write: printable ASCII without spaces or quotes.
IMAGE_PATTERN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.+=@:/-]{0,999}")
#: Environment variables a runtime reads for its own settings (binds, mounts, options): a
#: production may not set them, or its environment would rewrite the site's binds.
RUNTIME_ENVIRONMENT = ("APPTAINER", "SINGULARITY", "PODMAN", "SHIFTER", "CONTAINERS_",
                       "BWRAP", "LD_PRELOAD", "LD_AUDIT")
#: Characters that runtimes read as separators in a bind (`src:dst:ro`, lists with `,`).
BIND_SEPARATORS = (":", ",")
#: Where a containerised payload sees its work dir (under the /tmp every image has, which
#: bubblewrap mounts a tmpfs on: a read-only image needs no mount point of its own), its
#: outputs and its inputs: the same at every site, so its rendered files are too.
INSIDE = PurePosixPath("/tmp/gridtower")
#: The interpreter `${python}` names in a container: the image's.
INSIDE_PYTHON = "python3"

#: The runtimes a site admin may list by name alone; `runtimes: {name: {...}}` overrides.
BUILTIN: dict[str, dict[str, Any]] = {
    "bubblewrap": {
        "kind": "path",
        "argv": ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc",
                 "--ro-bind", "${image}", "/", "--dev", "/dev", "--proc", "/proc",
                 "--tmpfs", "/tmp", "${binds}", "--chdir", "${work_dir}", "--",
                 "${command}"],
        "bind": ["--bind", "${source}", "${target}"],
        "read_only": ["--ro-bind", "${source}", "${target}"],
    },
    "apptainer": {
        "kind": "path",
        "argv": ["apptainer", "exec", "--contain", "--no-home", "${binds}", "--pwd",
                 "${work_dir}", "${image}", "${command}"],
        "bind": ["--bind", "${source}:${target}"],
        "read_only": ["--bind", "${source}:${target}:ro"],
    },
    "singularity": {
        "kind": "path",
        "argv": ["singularity", "exec", "--contain", "--no-home", "${binds}", "--pwd",
                 "${work_dir}", "${image}", "${command}"],
        "bind": ["--bind", "${source}:${target}"],
        "read_only": ["--bind", "${source}:${target}:ro"],
    },
    "podman": {
        "kind": "reference",
        "argv": ["podman", "run", "--rm", "--network=none", "${binds}", "${environment}",
                 "--workdir", "${work_dir}", "${image}", "${command}"],
        "bind": ["--volume", "${source}:${target}:rw"],
        "read_only": ["--volume", "${source}:${target}:ro"],
        "environment": ["--env", "${name}=${value}"],
    },
    "podman-hpc": {
        "kind": "reference",
        "argv": ["podman-hpc", "run", "--rm", "${binds}", "${environment}", "--workdir",
                 "${work_dir}", "${image}", "${command}"],
        "bind": ["--volume", "${source}:${target}:rw"],
        "read_only": ["--volume", "${source}:${target}:ro"],
        "environment": ["--env", "${name}=${value}"],
    },
    "shifter": {
        "kind": "reference",
        "argv": ["shifter", "--image=${image}", "${binds}", "--workdir=${work_dir}", "--",
                 "${command}"],
        "bind": ["--volume=${source}:${target}"],
        "read_only": ["--volume=${source}:${target}:ro"],
    },
}


class ContainerProblem(ValueError):
    """An image or a runtime template the pilot cannot use: the attempt ends as `setup`."""


def runtime_problem(template: Mapping[str, Any]) -> str | None:
    """What is wrong with a runtime's templates (a site's override), or None."""
    if template.get("kind") not in ("path", "reference"):
        return "kind: expected path or reference"
    argv = template.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return "argv: expected a list of strings"
    for key, names in (("argv", (*VARIABLES, *SPLICED)), ("bind", BIND_VARIABLES),
                       ("read_only", BIND_VARIABLES),
                       ("environment", ENVIRONMENT_VARIABLES)):
        items = template.get(key)
        if items is None and key != "environment":
            return f"{key}: required"
        for position, argument in enumerate(items or []):
            problem = _argument_problem(argument, names, key == "argv")
            if problem:
                return f"{key}[{position}]: {problem}"
    if argv.count("${command}") != 1:
        return "argv: ${command} must be one whole argument, once"
    if "${binds}" not in argv:
        return "argv: ${binds} must be a whole argument (the work dir and inputs go there)"
    if ("${environment}" in argv) != (template.get("environment") is not None):
        return "environment: a template for ${environment} in argv, and only then"
    return None


def _argument_problem(argument: Any, names: Sequence[str], top: bool) -> str | None:
    if not isinstance(argument, str) or "\x00" in argument:
        return "expected a string without NUL"
    try:
        used = identifiers(argument)
    except ValueError as exc:
        return str(exc)
    for name in used:
        if name not in names:
            return f"${{{name}}} is not defined (known: {', '.join(names)})"
        if name in SPLICED and (not top or argument != f"${{{name}}}"):
            return f"${{{name}}} must be a whole argument of argv"
    return None


def image_problem(image: str) -> str | None:
    """What is wrong with a production's image name, or None; the pilot checks again where
    it leads (`resolve_image`)."""
    if not IMAGE_PATTERN.fullmatch(image.removeprefix("/")):
        return (f"{image[:100]!r}: an image name is printable ASCII (letters, digits and "
                "_ . + = @ : / -) up to 1000 characters, not starting with '-'")
    if ".." in image.split("/"):
        return f"{image!r}: an image name has no '..' part"
    return None


def environment_problem(names: Sequence[str]) -> str | None:
    """The first of `names` a container runtime would read as its own setting, or None."""
    for name in names:
        if name.upper().startswith(RUNTIME_ENVIRONMENT):
            return (f"{name}: a container runtime reads it as its own setting (binds, "
                    f"mounts); a containerised job may not set {', '.join(RUNTIME_ENVIRONMENT)}*")
    return None


def resolve_image(image: str, kind: str, images: str | None) -> str:
    """The image as the runtime is given it: for a `path` runtime, its resolved path, proved
    under the images root and present; raises ContainerProblem."""
    problem = image_problem(image)
    if problem:
        raise ContainerProblem(problem)
    if kind == "reference":
        return image
    if not images:
        raise ContainerProblem("the site declares no images root (containers.images) for "
                               "path images")
    root = os.path.realpath(images)
    path = os.path.realpath(os.path.join(root, image))
    if os.path.commonpath([root, path]) != root:
        raise ContainerProblem(f"image {image!r} leads to {path}, outside the site's images "
                               f"root {root}")
    if not os.path.exists(path):
        raise ContainerProblem(f"image {image!r} not found: no {path} at this site")
    return path


def wrap(template: Mapping[str, Any], image: str, command: Sequence[str],
         values: Mapping[str, Any], binds: Sequence[tuple[str, str, bool]],
         environment: Mapping[str, str]) -> list[str]:
    """The argv that runs `command` in `image`: `binds` are (source, target inside,
    writable); `environment` is what the payload is given beyond the site's."""
    problem = runtime_problem(template)
    if problem:
        raise ContainerProblem(f"runtime template: {problem}")
    for source, target, _ in binds:
        for path in (source, target):
            if any(mark in path for mark in BIND_SEPARATORS) or "\x00" in path:
                raise ContainerProblem(f"{path!r}: a bound path may not hold ':' or ','")
    rendered: list[str] = []
    variables = {**{name: str(values[name]) for name in VARIABLES if name != "image"},
                 "image": image}
    for argument in template["argv"]:
        if argument == "${binds}":
            for source, target, writable in binds:
                rendered += [render(part, {"source": source, "target": target})
                             for part in template["bind" if writable else "read_only"]]
        elif argument == "${environment}":
            for name, value in environment.items():
                rendered += [render(part, {"name": name, "value": value})
                             for part in template["environment"]]
        elif argument == "${command}":
            rendered += list(command)
        else:
            rendered.append(render(argument, variables))
    return rendered


#: Digests of directory images by path, with the stat signature of their tree then: a tree
#: is read again only when a file's size, time, inode or mode changed.
_DIGESTS: dict[str, tuple[int, str]] = {}


def digest(path: str) -> str:
    """`sha256:` of an image at the site: of a file's content, or of a directory's tree (each
    entry's relative path, type, mode and content or link target, in name order)."""
    if os.path.isfile(path):
        return "sha256:" + _file_hash(path)
    entries = sorted(_walk(path))
    signature = hash(tuple(entries))
    known = _DIGESTS.get(path)
    if known is not None and known[0] == signature:
        return known[1]
    tree = hashlib.sha256()
    for relative, mode, *_ in entries:
        full = os.path.join(path, relative)
        if stat.S_ISLNK(mode):
            what = "l " + os.readlink(full)
        elif stat.S_ISDIR(mode):
            what = "d"
        elif stat.S_ISREG(mode):
            what = "f " + _file_hash(full)
        else:
            what = "o"
        tree.update(f"{relative}\x00{stat.S_IMODE(mode):o}\x00{what}\n".encode(
            "utf-8", "surrogateescape"))
    value = "sha256:" + tree.hexdigest()
    _DIGESTS[path] = (signature, value)
    return value


def _walk(root: str) -> list[tuple[str, int, int, int, int]]:
    """(relative path, mode, size, mtime ns, inode) of every entry under `root`."""
    found = []
    for directory, names, files in os.walk(root):
        for name in (*names, *files):
            full = os.path.join(directory, name)
            info = os.lstat(full)
            found.append((os.path.relpath(full, root), info.st_mode, info.st_size,
                          info.st_mtime_ns, info.st_ino))
    return found


def _file_hash(path: str) -> str:
    value = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            value.update(chunk)
    return value.hexdigest()


def image_digest(image: str, kind: str) -> str | None:
    """The digest of a resolved image: measured for a path, read from an `@sha256:`
    reference, else None (a registry's tag is not measured here)."""
    if kind == "path":
        return digest(image)
    _, at, pinned = image.partition("@")
    return pinned if at and pinned.startswith("sha256:") else None
