"""Container runtimes: every built-in template rendered, the needs matched, and attacks from
outside — hostile image names, an environment that would rewrite the binds, templates
that would splice into a string — refused with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pilots import containers
from pilots.containers import BUILTIN, ContainerProblem, resolve_image, wrap
from sites.config import Needs, PilotShape
from sites.errors import ConfigError
from sites.schema import build
from tower.errors import SpecError
from tower.management.specs import ProductionSpec, needs_of, no_fit

BINDS = [("/scratch/p1/slot-0", "/tmp/gridtower", True),
         ("/data/store/raw/a.csv", "/tmp/gridtower/inputs/a.csv", False)]
VALUES = {"work_dir": "/tmp/gridtower", "output_dir": "/tmp/gridtower/output",
          "input_dir": "/tmp/gridtower/inputs"}
COMMAND = ["python3", "sim.py", "--out", "${binds}", "a b;rm -rf /"]

EXPECTED = {
    "bubblewrap": ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc",
                   "--ro-bind", "IMG", "/", "--dev", "/dev", "--proc", "/proc",
                   "--tmpfs", "/tmp", "--bind", "/scratch/p1/slot-0", "/tmp/gridtower",
                   "--ro-bind", "/data/store/raw/a.csv", "/tmp/gridtower/inputs/a.csv",
                   "--chdir", "/tmp/gridtower", "--", *COMMAND],
    "apptainer": ["apptainer", "exec", "--contain", "--no-home",
                  "--bind", "/scratch/p1/slot-0:/tmp/gridtower",
                  "--bind", "/data/store/raw/a.csv:/tmp/gridtower/inputs/a.csv:ro",
                  "--pwd", "/tmp/gridtower", "IMG", *COMMAND],
    "podman": ["podman", "run", "--rm", "--network=none",
               "--volume", "/scratch/p1/slot-0:/tmp/gridtower:rw",
               "--volume", "/data/store/raw/a.csv:/tmp/gridtower/inputs/a.csv:ro",
               "--env", "SEED=7", "--env", "GRIDTOWER_JOB=3",
               "--workdir", "/tmp/gridtower", "IMG", *COMMAND],
    "podman-hpc": ["podman-hpc", "run", "--rm",
                   "--volume", "/scratch/p1/slot-0:/tmp/gridtower:rw",
                   "--volume", "/data/store/raw/a.csv:/tmp/gridtower/inputs/a.csv:ro",
                   "--env", "SEED=7", "--env", "GRIDTOWER_JOB=3",
                   "--workdir", "/tmp/gridtower", "IMG", *COMMAND],
    "shifter": ["shifter", "--image=IMG", "--volume=/scratch/p1/slot-0:/tmp/gridtower",
                "--volume=/data/store/raw/a.csv:/tmp/gridtower/inputs/a.csv:ro",
                "--workdir=/tmp/gridtower", "--", *COMMAND],
}
EXPECTED["singularity"] = ["singularity", *EXPECTED["apptainer"][1:]]


@pytest.mark.parametrize("runtime", sorted(BUILTIN))
def test_every_built_in_runtime_renders_to_an_argv_with_the_binds_and_the_command_as_given(
        runtime: str) -> None:
    argv = wrap(BUILTIN[runtime], "IMG", COMMAND, VALUES, BINDS,
                {"SEED": "7", "GRIDTOWER_JOB": "3"})
    # the command's own `${binds}` and shell characters stay what they were: one argument
    assert argv == EXPECTED[runtime]


def test_a_bound_path_with_a_bind_separator_is_refused() -> None:
    with pytest.raises(ContainerProblem, match="may not hold"):
        wrap(BUILTIN["apptainer"], "IMG", ["x"], VALUES,
             [("/scratch/a:/etc", "/tmp/gridtower", True)], {})


@pytest.mark.parametrize("image", [
    "../etc", "a/../../etc", "/images/../etc", "with\x00nul", "caf\u00e9", "-rf", "--bind=/",
    "a b", "", "x" * 1001, "$(id)", "a;b", "'quoted'",
])
def test_a_hostile_image_name_is_refused_at_submission(image: str) -> None:
    with pytest.raises(SpecError, match="container.image"):
        spec(container={"image": image, "runtime": "bubblewrap"})


def test_an_image_outside_the_images_root_is_refused_by_the_pilot(tmp_path: Path) -> None:
    root, outside = tmp_path / "images", tmp_path / "secret"
    (root / "good").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_image("good", "path", str(root)) == str(root / "good")
    assert resolve_image(str(root / "good"), "path", str(root)) == str(root / "good")
    for image, why in (("link", "outside the site's images root"),
                       (str(outside), "outside the site's images root"),
                       ("missing", "not found"), ("../secret", "no '..' part")):
        with pytest.raises(ContainerProblem, match=why):
            resolve_image(image, "path", str(root))
    with pytest.raises(ContainerProblem, match="no images root"):
        resolve_image("good", "path", None)
    assert resolve_image("docker.io/library/python:3.11", "reference", None) == \
        "docker.io/library/python:3.11"


@pytest.mark.parametrize("name", ["APPTAINER_BIND", "SINGULARITY_BINDPATH",
                                  "APPTAINERENV_X", "PODMAN_USERNS", "LD_PRELOAD",
                                  "BWRAP_ARGS", "CONTAINERS_CONF"])
def test_a_containerised_production_may_not_set_the_runtimes_own_variables(name: str) -> None:
    with pytest.raises(SpecError, match=f"environment.*{name}"):
        spec(container={"image": "toysim", "runtime": "apptainer"},
             environment={name: "/:/host"})
    assert spec(environment={name: "x"}).container is None  # a bare job runs no runtime


@pytest.mark.parametrize(("override", "problem"), [
    ({"argv": ["bwrap", "--ro-bind", "${image}", "/", "${binds}", "x${command}"]},
     "must be a whole argument"),
    ({"argv": ["bwrap", "--setenv=${binds}", "${command}"]}, "must be a whole argument"),
    ({"argv": ["bwrap", "${binds}", "${command}", "${command}"]}, "once"),
    ({"argv": ["bwrap", "${command}"]}, r"\$\{binds\}"),
    ({"argv": ["sh", "-c", "${shell}", "${binds}", "${command}"]}, r"\$\{shell\} is not"),
    ({"bind": ["--bind", "${source}", "${command}"]}, r"\$\{command\} is not"),
    ({"argv": ["bwrap", "$(id)", "${binds}", "${command}"]}, "malformed"),
    ({"kind": "url"}, "kind"),
    ({"mount": []}, "unknown key"),
])
def test_a_site_template_that_would_splice_into_a_string_is_refused(
        override: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=f"containers.runtimes.*bubblewrap.*{problem}"):
        shape({"bubblewrap": override})


def test_a_site_lists_runtimes_by_name_or_overrides_one() -> None:
    assert set(shape(["bubblewrap", "apptainer"]).containers.runtimes) == \
        {"bubblewrap", "apptainer"}
    local = shape({"apptainer": {"argv": ["/opt/apptainer/bin/apptainer", "exec",
                                          "${binds}", "${image}", "${command}"]}})
    template = local.containers.runtimes["apptainer"]
    assert template["argv"][0] == "/opt/apptainer/bin/apptainer"
    assert template["bind"] == BUILTIN["apptainer"]["bind"]
    with pytest.raises(ConfigError, match="charliecloud: not a built-in runtime"):
        shape(["charliecloud"])


def test_a_containerised_job_fits_only_pilots_offering_its_runtime() -> None:
    boxed = needs_of(spec(container={"image": "toysim", "runtime": "apptainer"}))
    assert boxed == Needs(cores=1, memory=None, walltime=600, runtime="apptainer")
    offering, bare = shape(["apptainer"]), shape([])
    assert offering.misfit(boxed) is None
    assert bare.misfit(boxed) == "runtime"
    assert bare.misfit(needs_of(spec())) is None
    assert "it runs in a apptainer container, the site's pilots offer no container " \
           "runtime" in (bare.shortfall(boxed) or "")
    field, why = no_fit(boxed, {"a/default": bare, "b/default": shape(["podman"])}) or ("", "")
    assert field == "container.runtime"
    assert "a/default offers no container runtime; b/default offers podman" in why
    assert no_fit(boxed, {"a/default": bare, "b/default": offering}) is None


def test_a_directory_image_digest_follows_its_content(tmp_path: Path) -> None:
    (tmp_path / "img" / "bin").mkdir(parents=True)
    (tmp_path / "img" / "bin" / "sim").write_text("v1")
    (tmp_path / "img" / "lib").symlink_to("bin")
    first = containers.digest(str(tmp_path / "img"))
    assert first == containers.digest(str(tmp_path / "img"))
    (tmp_path / "img" / "bin" / "sim").write_text("v2!")
    assert containers.digest(str(tmp_path / "img")) != first


def spec(**changes: Any) -> ProductionSpec:
    request = {"name": "p", "software": "sim 1", "command": ["sim"], "events_total": 10,
               "events_per_job": 10, "walltime": 600, **changes}
    return build(ProductionSpec, request, "request", error=SpecError)


def shape(runtimes: Any) -> PilotShape:
    return build(PilotShape, {"containers": {"runtimes": runtimes}}, "sites.yaml",
                 prefix="containers")


@pytest.mark.parametrize(("seen", "problem"), [
    ({"steering": {"steering.json": "x" * 262145}}, "steering: a file over"),
    ({"command": ["x" * 65537]}, "over 65536 characters"),
    ({"steering": {f"f{n}": "" for n in range(101)}}, "provenance.steering"),
    ({"container": {"runtime": "bubblewrap", "image": "toysim", "digest": "md5:abc"}},
     "provenance.container.digest"),
    ({"host": "h" * 256}, "provenance.host"),
])
def test_a_pilots_account_of_how_it_ran_is_bounded(seen: dict[str, Any], problem: str) -> None:
    from tower.loops.attempts import Report

    report = {"job": 1, "attempt": 1, "ending": "finished", "exit_code": 0, "provenance": seen}
    with pytest.raises(SpecError, match=problem):
        build(Report, report, "report", error=SpecError)


@pytest.mark.parametrize(("container", "environment", "why"), [
    ({"image": "toysim"}, {"APPTAINER_BIND": "/:/host"}, "APPTAINER_BIND: a container runtime"),
    ({"image": "../toysim"}, {}, "no '..' part"),
    ({"image": "/etc"}, {}, "outside the site's images root"),
    ({"image": "absent"}, {}, "image 'absent' not found"),
    ({"image": "toysim", "template": None}, {}, "this site offers no bubblewrap runtime"),
])
def test_the_pilot_ends_a_job_it_cannot_contain_as_setup_without_starting_it(
        tmp_path: Path, container: dict[str, Any], environment: dict[str, str],
        why: str) -> None:
    """What a tower should have refused (a production stored before a check, a site changed
    since): the pilot checks again, and runs nothing."""
    from pilots.payload import Payload

    (tmp_path / "images" / "toysim").mkdir(parents=True)
    claim = {"job": 1, "attempt": 1, "production": "p", "command": ["true"], "steering": {},
             "environment": environment, "variables": {}, "outputs": [], "walltime": 60,
             "container": {"runtime": "bubblewrap", "images": str(tmp_path / "images"),
                           "template": BUILTIN["bubblewrap"], **container}}
    payload = Payload(claim, {"site": "s", "pilot_id": "p1"}, tmp_path / "slot",
                      tmp_path / "storage")
    report = payload.run()
    assert report["ending"] == "setup" and why in report["reason"]
    assert payload.max_rss_mb is None  # no process ran
    assert report["provenance"]["container"]["image"] == container["image"]


def test_the_pilots_account_cuts_what_the_tower_would_not_keep_and_the_tower_takes_it() -> None:
    from pilots.payload import VALUE_LIMIT, _account
    from tower.loops.attempts import Seen

    account = _account(["sim"] * 1500, {"big.mac": "x" * 300_000},
                       {"HUGE": "y" * 200_000, "SEED": "7"})
    assert len(account["command"]) == 1000
    assert len(account["environment"]["HUGE"]) == VALUE_LIMIT
    assert account["environment"]["HUGE"].endswith("[200000 characters, cut]")
    assert account["environment"]["SEED"] == "7"
    assert account["steering"]["big.mac"].endswith("[300000 characters, cut]")
    assert Seen.model_validate(account).environment["SEED"] == "7"
