"""tower/auth/ca.py: the CA's own certificate, each kind issued, pilot credentials, revocation."""

from __future__ import annotations

import ipaddress
import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tower.auth import ca
from tower.cli import main
from tower.errors import ConfigError, Conflict, NotFound


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    ca.init_ca(tmp_path / "ca", "test CA")
    return tmp_path / "ca"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_makes_a_ca_certificate_its_private_key_an_empty_crl_and_index(
        tmp_path: Path) -> None:
    files = ca.init_ca(tmp_path / "new" / "ca", "LZ CA", days=10)

    cert = load_cert(files.cert)
    assert cert.subject.rfc4514_string() == "CN=LZ CA,O=gridtower"
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert timedelta(days=10) <= cert.not_valid_after_utc - cert.not_valid_before_utc \
        <= timedelta(days=10) + ca.CLOCK_SKEW
    assert mode(files.key) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    assert crl.is_signature_valid(cert.public_key()) and len(crl) == 0
    assert json.loads(files.index.read_text())["certificates"] == []


def test_init_refuses_a_directory_holding_a_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(Conflict, match="a CA is there already"):
        ca.init_ca(ca_dir, "again")
    assert (ca_dir / "ca.key").read_bytes() == before


@pytest.mark.parametrize(("kind", "subject", "usage"), [
    ("user", "CN=alice smith,OU=users,O=gridtower", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("robot", "CN=nightly,OU=robots,O=gridtower", ExtendedKeyUsageOID.CLIENT_AUTH),
    ("host", "CN=tower.example.org,OU=hosts,O=gridtower", ExtendedKeyUsageOID.SERVER_AUTH),
])
def test_issue_writes_a_signed_certificate_and_a_0600_key(
        ca_dir: Path, kind: ca.Kind, subject: str, usage: x509.ObjectIdentifier) -> None:
    name = x509.Name.from_rfc4514_string(subject).get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value
    cert_path, key_path = ca.issue(ca_dir, kind, str(name), days=7)

    cert = load_cert(cert_path)
    assert cert.subject.rfc4514_string() == subject
    assert eku(cert) == [usage]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load_cert(ca_dir / "ca.crt"))
    assert mode(key_path) == 0o600 and cert_path.parent == ca_dir / "issued"
    assert [(entry["serial"], entry["kind"], entry["subject"], entry["state"])
            for entry in ca.listing(ca_dir)] == [
        (f"{cert.serial_number:x}", kind, subject, "valid")]


def test_a_host_certificate_names_its_hosts_and_addresses(ca_dir: Path) -> None:
    named, _ = ca.issue(ca_dir, "host", "tower", hosts=["tower.example.org", "10.0.0.7", "::1"])
    alone, _ = ca.issue(ca_dir, "host", "localhost")

    def names(path: Path) -> list[object]:
        return [name.value for name in load_cert(path).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value]

    assert names(named) == ["tower.example.org", ipaddress.ip_address("10.0.0.7"),
                            ipaddress.ip_address("::1")]
    assert names(alone) == ["localhost"]


def test_a_pilot_credential_is_short_lived_and_names_its_site(ca_dir: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    pem = ca.issue_pilot_credential(ca_dir, "nersc", "3f2a9c", seconds=600)
    after = datetime.now(UTC)

    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.rfc4514_string() == "CN=pilot 3f2a9c,OU=pilots,OU=site nersc,O=gridtower"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert before + timedelta(seconds=600) <= cert.not_valid_after_utc \
        <= after + timedelta(seconds=600)
    assert before - ca.CLOCK_SKEW <= cert.not_valid_before_utc <= after - ca.CLOCK_SKEW
    # the key follows the certificate in the same PEM
    key = serialization.load_pem_private_key(pem.split(b"-----END CERTIFICATE-----\n")[1],
                                             password=None)
    assert key.public_key() == cert.public_key()
    assert [entry["kind"] for entry in ca.listing(ca_dir)] == ["pilot"]


def test_expired_pilot_credentials_leave_the_index(ca_dir: Path) -> None:
    ca.issue_pilot_credential(ca_dir, "nersc", "old", seconds=0.001)
    ca.issue(ca_dir, "user", "alice", days=0.001 / 86400)
    time.sleep(0.01)  # both have expired
    ca.issue_pilot_credential(ca_dir, "nersc", "new", seconds=600)

    assert [(entry["kind"], entry["subject"].split(",")[0]) for entry in ca.listing(ca_dir)] \
        == [("user", "CN=alice"), ("pilot", "CN=pilot new")]


def test_revoking_puts_the_serial_in_a_fresh_signed_crl(ca_dir: Path) -> None:
    kept, _ = ca.issue(ca_dir, "user", "alice")
    gone, _ = ca.issue(ca_dir, "robot", "nightly")
    serial = load_cert(gone).serial_number
    first = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())

    assert ca.revoke(ca_dir, gone) == serial

    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(load_cert(ca_dir / "ca.crt").public_key())
    assert [revoked.serial_number for revoked in crl] == [serial]
    assert crl.get_revoked_certificate_by_serial_number(load_cert(kept).serial_number) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=ca.CRL_DAYS)
    assert {entry["subject"]: entry["state"] for entry in ca.listing(ca_dir)} == {
        "CN=alice,OU=users,O=gridtower": "valid", "CN=nightly,OU=robots,O=gridtower": "revoked"}


@pytest.mark.parametrize("form", [str.lower, str.upper, lambda s: "0x" + s])
def test_revoke_by_serial_in_hex(ca_dir: Path, form: object) -> None:
    cert, _ = ca.issue(ca_dir, "user", "alice")
    serial = load_cert(cert).serial_number

    assert ca.revoke(ca_dir, form(f"{serial:x}")) == serial  # type: ignore[operator]
    with pytest.raises(Conflict, match="revoked already"):
        ca.revoke(ca_dir, serial)


def test_write_crl_keeps_the_validity_it_was_given(ca_dir: Path) -> None:
    ca.write_crl(ca_dir, days=3)
    cert, _ = ca.issue(ca_dir, "user", "alice")
    ca.revoke(ca_dir, cert)

    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=3)


def test_refusals_name_the_file_or_the_field(ca_dir: Path, tmp_path: Path) -> None:
    other = ca.init_ca(tmp_path / "other", "other CA")
    foreign, _ = ca.issue(other.directory, "user", "mallory")
    with pytest.raises(NotFound, match=r"no CA here, ca.crt is missing"):
        ca.issue(tmp_path / "nowhere", "user", "alice")
    with pytest.raises(NotFound, match="not by this CA"):
        ca.revoke(ca_dir, foreign)
    with pytest.raises(NotFound, match=r"index.json: serial 123abc was not issued"):
        ca.revoke(ca_dir, "123abc")
    with pytest.raises(ConfigError, match="neither a serial"):
        ca.revoke(ca_dir, "not-hex")
    with pytest.raises(ConfigError, match="the CA expires") as error:
        ca.issue(ca_dir, "user", "alice", days=ca.CA_DAYS + 1)
    assert error.value.field == "days"
    with pytest.raises(ConfigError, match="not positive"):
        ca.issue(ca_dir, "user", "alice", days=0)
    with pytest.raises(ConfigError, match="not positive"):
        ca.write_crl(ca_dir, days=-1)
    with pytest.raises(ConfigError, match="not positive"):
        ca.init_ca(tmp_path / "short", days=0)
    with pytest.raises(ConfigError, match="only host certificates name hosts"):
        ca.issue(ca_dir, "user", "alice", hosts=["example.org"])
    with pytest.raises(ConfigError, match="name 'x{65}'") as error:
        ca.issue(ca_dir, "user", "x" * 65)
    assert error.value.field == "name"
    with pytest.raises(ConfigError, match="site and pilot id"):
        ca.issue_pilot_credential(ca_dir, "", "abc", 60)
    assert ca.listing(ca_dir) == []  # nothing was issued by a refused request


def test_issue_never_overwrites_a_key(ca_dir: Path) -> None:
    _, key = ca.issue(ca_dir, "user", "alice")
    before = key.read_bytes()
    with pytest.raises(Conflict, match=r"alice.crt: exists already"):
        ca.issue(ca_dir, "user", "alice")
    assert key.read_bytes() == before


def test_the_ca_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(tmp_path / "ca")
    assert main(["ca", "init", directory, "--name", "cli CA", "--days", "20"]) == 0
    assert main(["ca", "issue", "host", "tower", "--ca", directory, "--days", "10",
                 "--host", "127.0.0.1", "--out", str(tmp_path / "out"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out.split("\n", 4)[4])
    assert written == {"cert": str(tmp_path / "out" / "tower.crt"),
                       "key": str(tmp_path / "out" / "tower.key")}
    assert mode(tmp_path / "out" / "tower.key") == 0o600
    assert main(["ca", "list", "--ca", directory, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["certificates"]
    assert (row["kind"], row["subject"]) == ("host", "CN=tower,OU=hosts,O=gridtower")
    assert main(["ca", "revoke", "--ca", directory, row["serial"]]) == 0
    assert main(["ca", "revoke", "--ca", directory, row["serial"]]) == Conflict.exit_code
    assert main(["ca", "crl", "--ca", directory, "--days", "2"]) == 0
    assert main(["ca", "list", "--ca", str(tmp_path / "nowhere")]) == NotFound.exit_code
