"""The ARC CE batch system without a CE: its job description, the script that carries the
pilot's secrets, the state table, its options, the proxy it signs; and `tower sites
check` on every batch system (it once crashed on condor). The REST calls themselves run
against a real CE in tests/integration/test_arc.py."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sites.arc import SCRIPT, ArcBatch, failure, status
from sites.batch import BATCH_SYSTEMS, BatchState, PilotRequest, open_batch_system
from sites.config import SiteConfig
from sites.proxy import PROXY_CERT_INFO, sign_proxy
from sites.runner import LocalRunner
from tower.auth import ca
from tower.errors import BackendError, ConfigError

SECRET = "amqp://pilot:s3cr'et \"$(touch x)$HOME@broker.example.org/prod"
CREDENTIAL = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def robot(tmp_path: Path) -> tuple[Path, Path]:
    authority = ca.init_ca(tmp_path / "ca", "test CA").directory
    return ca.issue(authority, "robot", "tower robot", days=2, out=tmp_path / "robot")


def arc_site(robot: tuple[Path, Path], **changes: Any) -> SiteConfig:
    options = {"url": "https://ce.example.org:443/arex/", "ca_file": str(robot[0]),
               "certificate": str(robot[0]), "key": str(robot[1]), "queue": "grid",
               "runtime_environments": ["ENV/PROXY"]}
    settings: dict[str, Any] = {
        "name": "grid", "batch": "arc", "scratch": "/scratch", "storage": "/data",
        "pilot": {"slots": 4, "cores": 4, "memory": 8000, "walltime": "2h"},
        "setup": ["module load python", "echo 'set up'"], "batch_options": options}
    settings.update(changes)
    return SiteConfig(**settings)


def pilot_request() -> PilotRequest:
    return PilotRequest("5f1c0e9a8b7c6d5e", ["pilot", "--tower", "https://tower:8443/",
                                              "--credential", "5f1c0e9a8b7c6d5e.pem"],
                        {"GRIDTOWER_BROKER_URL": SECRET},
                        {"5f1c0e9a8b7c6d5e.pem": CREDENTIAL, "tower-ca.pem": CREDENTIAL})


def test_the_description_asks_what_the_site_says_and_holds_no_secret(
        robot: tuple[Path, Path]) -> None:
    batch = ArcBatch(arc_site(robot), LocalRunner())
    text = batch.description(pilot_request(), "8c1e4a")
    assert batch.rest == "https://ce.example.org:443/arex/rest/1.0"
    for attribute in ('(executable="gridtower-pilot.sh")', '(queue="grid")',
                      '(walltime="7200 seconds")', '(count="4")', '(countpernode="4")',
                      '(memory="2000")', '(runtimeenvironment="ENV/PROXY")',
                      '(delegationid="8c1e4a")', '(stdout="pilot.log")',
                      '(inputfiles=("gridtower-pilot.sh" "") ("5f1c0e9a8b7c6d5e.pem" "") '
                      '("tower-ca.pem" ""))'):
        assert attribute in text
    assert "s3cr" not in text and "BEGIN" not in text and "arguments" not in text


def test_an_xrsl_value_doubles_quotes_and_refuses_control_characters(
        robot: tuple[Path, Path]) -> None:
    batch = ArcBatch(arc_site(robot, name='odd"site'), LocalRunner())
    assert '(jobname="gridtower-odd""site-5f1c0e9a8b7c")' in batch.description(
        pilot_request(), None)
    with pytest.raises(ConfigError, match="queue"):
        ArcBatch(arc_site(robot, batch_options={**arc_site(robot).batch_options,
                                                "queue": "a\nb"}), LocalRunner())


def test_the_script_removes_itself_and_runs_the_pilot_with_its_environment(
        robot: tuple[Path, Path], tmp_path: Path) -> None:
    request = PilotRequest("p", ["sh", "-c", 'printf "%s|%s|%s" "$GRIDTOWER_BROKER_URL" '
                                 '"$0" "$(cat marker)" > out', "it's $HOME"],
                           {"GRIDTOWER_BROKER_URL": SECRET})
    site = arc_site(robot, setup=["echo set > marker"])
    script = ArcBatch(site, LocalRunner()).inputs(request)[SCRIPT]
    (tmp_path / SCRIPT).write_text(script)
    subprocess.run(["/bin/sh", SCRIPT], cwd=tmp_path, check=True, timeout=30)
    # the secret reached the pilot verbatim, nothing was expanded, the script is gone
    assert (tmp_path / "out").read_text() == f"{SECRET}|it's $HOME|set"
    assert not (tmp_path / SCRIPT).exists() and not (tmp_path / "x").exists()


def test_input_file_names_are_plain(robot: tuple[Path, Path]) -> None:
    batch = ArcBatch(arc_site(robot), LocalRunner())
    for name in ("../escape", SCRIPT, "a b"):
        with pytest.raises(BackendError, match="input file name"):
            batch.inputs(PilotRequest("p", ["pilot"], {}, {name: "x"}))


@pytest.mark.parametrize(("state", "error", "pilot", "outcome"), [
    ("ACCEPTING", "", BatchState.PENDING, None),
    ("ACCEPTED", "", BatchState.PENDING, None),
    ("PREPARING", "", BatchState.PENDING, None),
    ("SUBMITTING", "", BatchState.PENDING, None),
    ("QUEUING", "", BatchState.PENDING, None),
    ("HELD", "", BatchState.PENDING, None),
    ("RUNNING", "", BatchState.RUNNING, None),
    ("EXITINGLRMS", "", BatchState.RUNNING, None),
    ("KILLING", "", BatchState.RUNNING, None),
    ("FINISHING", "", BatchState.ENDED, "pilot_vanished"),
    ("FINISHED", "", BatchState.ENDED, "pilot_vanished"),
    ("WIPED", "", BatchState.ENDED, "pilot_vanished"),
    ("KILLED", "", BatchState.ENDED, "pilot_killed"),
    ("FAILED", "LRMS error: (271) job killed: wall", BatchState.ENDED, "pilot_killed"),
    ("FAILED", "Job exceeded time limit", BatchState.ENDED, "pilot_killed"),
    ("FAILED", "LRMS error: (-1) job killed: vmem; memory limit", BatchState.ENDED,
     "out_of_memory"),
    ("FAILED", "Failed in files download (pre-processing)", BatchState.ENDED,
     "node_failure"),
    ("FAILED", "", BatchState.ENDED, "node_failure"),
    ("SOMETHING_NEW", "", BatchState.ENDED, "pilot_vanished"),
])
def test_arc_states_map_to_pilot_states_and_outcomes(state: str, error: str,
                                                     pilot: BatchState,
                                                     outcome: str | None) -> None:
    seen = status(state, error)
    assert (seen.state, seen.outcome) == (pilot, outcome)


@pytest.mark.parametrize(("activity", "error", "outcome"), [
    # what the fork back end says of a pilot its CPU-time limit (ulimit -t) killed
    ({"Error": "LRMS error: (137) Job finished with wrong exit code - 137 != 0",
      "ExitCode": "137", "RequestedTotalWallTime": "3", "UsedTotalWallTime": "4"},
     "LRMS error: (137) Job finished with wrong exit code - 137 != 0; ran 4s of its 3s "
     "walltime", "pilot_killed"),
    ({"Error": ["LRMS error: (137) Job finished with wrong exit code - 137 != 0"],
      "RequestedTotalWallTime": "600", "UsedTotalWallTime": "40"},
     "LRMS error: (137) Job finished with wrong exit code - 137 != 0", "node_failure"),
    ({"RequestedTotalWallTime": "60", "UsedTotalWallTime": "60"}, "ran 60s of its 60s walltime",
     "pilot_killed"),
    ({"Error": "Failed in files download", "UsedTotalWallTime": "9"},
     "Failed in files download", "node_failure"),
])
def test_a_failed_job_that_used_its_walltime_is_the_ces_time_limit(
        activity: dict[str, object], error: str, outcome: str) -> None:
    assert failure(activity) == error
    assert status("FAILED", error).outcome == outcome


def test_a_robot_key_others_may_read_is_refused_at_load(robot: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    from tests.conftest import write_home
    from tower.config import load_config

    robot[1].chmod(0o640)
    path = write_home(tmp_path / "home", "sqlite:///x.db",
                      site={"batch": "arc", "batch_options": arc_site(robot).batch_options})
    with pytest.raises(ConfigError, match=r"sites\.local\.batch_options\.key: .* has mode "
                                          r"0640: the robot key must be readable by its "
                                          r"owner alone \(chmod 600"):
        load_config(path)
    robot[1].chmod(0o600)
    assert load_config(path).sites["local"].batch == "arc"


@pytest.mark.parametrize("url", ["http://ce.example.org/arex", "ce.example.org",
                                 "https://ce example.org/arex"])
def test_the_ce_url_must_be_https(robot: tuple[Path, Path], url: str) -> None:
    with pytest.raises(ConfigError, match="batch_options.url"):
        ArcBatch(arc_site(robot, batch_options={**arc_site(robot).batch_options,
                                                "url": url}), LocalRunner())


def test_the_proxy_is_the_robot_plus_one_cn_and_ends_with_it(
        robot: tuple[Path, Path]) -> None:
    # the CE's side: a key and a request for it (ARC's own requests say version 2; the
    # integration test signs those)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    chain = sign_proxy(request, robot[0].read_bytes(), robot[1].read_bytes(), 30 * 86400)
    proxy, issuer = x509.load_pem_x509_certificates(chain)
    assert issuer == x509.load_pem_x509_certificate(robot[0].read_bytes())
    assert proxy.issuer == issuer.subject
    assert list(proxy.subject)[:-1] == list(issuer.subject)
    assert list(proxy.subject)[-1].value == str(proxy.serial_number)
    assert proxy.public_key() == key.public_key()
    info = proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO)
    assert info.critical
    # asked for 30 days, the robot lives 2: the proxy ends with it
    assert proxy.not_valid_after_utc == issuer.not_valid_after_utc
    short = x509.load_pem_x509_certificates(sign_proxy(request, robot[0].read_bytes(),
                                                        robot[1].read_bytes(), 3600))[0]
    lifetime = short.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)


def test_a_delegation_request_that_is_not_one_is_refused(robot: tuple[Path, Path]) -> None:
    with pytest.raises(BackendError, match="not a certificate request"):
        sign_proxy(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
                   b"REQUEST-----\n", robot[0].read_bytes(), robot[1].read_bytes(), 3600)


@pytest.mark.parametrize("batch", sorted(BATCH_SYSTEMS))
def test_sites_check_runs_for_every_batch_system(batch: str, robot: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """Every batch system's checks run to PASS or FAIL lines, none crashes (condor once
    did): here no HTCondor runs, and no CE answers at ce.example.org."""
    from tower.loops.site_check import check_site

    options = ({"url": "https://127.0.0.1:9/arex", "ca_file": str(robot[0]),
                "certificate": str(robot[0]), "key": str(robot[1]), "timeout": 5}
               if batch == "arc" else {})
    site = SiteConfig(name="s", batch=batch, batch_options=options,
                      scratch=str(tmp_path / "scratch"), storage=str(tmp_path / "storage"))
    runner = LocalRunner()
    checks = check_site(site, open_batch_system(site, runner), runner, ["true"])
    names = [check.name for check in checks]
    assert names[0] == "access" and names[-2:] == ["scratch writable", "storage writable"]
    if batch == "condor":
        assert {"command condor_submit", "command condor_q", "command condor_rm"} <= set(names)
    if batch == "arc":
        failed = [check for check in checks if check.name.startswith("CE")]
        assert [check.name for check in failed] == [
            "CE info", "CE credential", "CE job submit, status, clean"]
        assert all(not check.passed and "unreachable" in check.detail for check in failed)
