"""A small certificate authority for the tower: its key, the certificates it issued, its CRL.

A CA directory holds `ca.key` (mode 0600), `ca.crt`, `crl.pem` and `index.json`,
the list of every certificate issued (serial, kind, subject, validity, revocation),
so that a certificate can be revoked by its serial alone. Keys are EC P-256:
as strong as RSA 3072 for TLS 1.2 and 1.3, but made in well under a millisecond
(the factory mints a credential for every pilot) and with short certificates.

Subjects are written as RFC 4514 strings (`cryptography`'s `rfc4514_string()`),
the form the API layer matches grants against: `CN=alice,OU=users,O=gridtower`,
`CN=pilot ID,OU=pilots,OU=site SITE,O=gridtower`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tower.errors import ConfigError, Conflict, NotFound

Kind = Literal["user", "robot", "host", "pilot"]
KINDS: tuple[Kind, ...] = ("user", "robot", "host", "pilot")

ORGANIZATION = "gridtower"
#: Days of validity of a new CA, of issued certificates, and of a CRL.
CA_DAYS = 3650
CERT_DAYS = 365
CRL_DAYS = 30
#: Certificates start this long before they are made, so a site whose clock is a little
#: behind accepts a pilot's credential at once.
CLOCK_SKEW = timedelta(minutes=5)

_UNITS: dict[Kind, str] = {"user": "users", "robot": "robots", "host": "hosts",
                           "pilot": "pilots"}


@dataclass(frozen=True)
class CaFiles:
    """The files of a CA directory."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def index(self) -> Path:
        return self.directory / "index.json"

    @property
    def lock(self) -> Path:
        return self.directory / ".lock"


@dataclass(frozen=True)
class _Authority:
    files: CaFiles
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def init_ca(directory: Path, name: str = "gridtower CA", days: int = CA_DAYS) -> CaFiles:
    """Make a CA in `directory` (created if need be): key, self-signed certificate, empty
    CRL, empty index. Conflict if a CA is there already."""
    _check_positive(timedelta(days=days))
    files = CaFiles(Path(directory))
    files.directory.mkdir(parents=True, exist_ok=True)
    if files.cert.exists() or files.key.exists():
        raise Conflict(f"{files.directory}: a CA is there already ({files.cert.name})")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name, "name", unit=None)
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(files.key, _key_pem(key))
    _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_index(files, {"crl_number": 0, "crl_days": CRL_DAYS, "certificates": []})
    write_crl(files.directory)
    return files


def issue(ca_dir: Path, kind: Kind, name: str, days: float = CERT_DAYS, *,
          site: str | None = None, pilot_id: str | None = None, hosts: Sequence[str] = (),
          out: Path | None = None) -> tuple[Path, Path]:
    """Issue a certificate of `kind`, written as `NAME.crt` and `NAME.key` (0600) into `out`
    (default: the CA's `issued/`). A host's names and addresses are `hosts` (default:
    NAME); a pilot's subject names `site` and `pilot_id`, and `days` may be a fraction.
    Returns (cert, key) paths."""
    directory = Path(out) if out is not None else Path(ca_dir) / "issued"
    stem = _file_stem(name)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise Conflict(f"{path}: exists already; remove it or choose another --out")
    cert, key = _issue(ca_dir, kind, name, timedelta(days=days), site, pilot_id, hosts)
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_pilot_credential(ca_dir: Path, site: str, pilot_id: str, seconds: float) -> bytes:
    """A pilot's credential, valid for `seconds`: its certificate then its key, as PEM,
    in memory (the factory hands it to the pilot; it is never written by the tower)."""
    cert, key = _issue(ca_dir, "pilot", pilot_id, timedelta(seconds=seconds), site, pilot_id,
                       ())
    return cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key)


def revoke(ca_dir: Path, serial_or_cert: int | str | Path) -> int:
    """Revoke a certificate this CA issued, named by its serial (an int, or hex as
    `tower ca list` shows it) or its certificate file; the CRL is written anew.
    Returns the serial."""
    authority = _load(ca_dir)
    serial = _serial_of(authority, serial_or_cert)
    with _locked(authority.files):
        index = _read_index(authority.files)
        entry = next((e for e in index["certificates"] if e["serial"] == f"{serial:x}"), None)
        if entry is None:
            raise NotFound(f"{authority.files.index}: serial {serial:x} was not issued by "
                           "this CA", field="serial")
        if entry["revoked_at"] is not None:
            raise Conflict(f"serial {serial:x} ({entry['subject']}) was revoked already, "
                           f"at {entry['revoked_at']}", field="serial")
        entry["revoked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _write_crl(authority, index, index["crl_days"])
    return serial


def write_crl(ca_dir: Path, days: int | None = None) -> Path:
    """Sign and write the CRL anew, valid for `days` (default: as last time). Servers
    refuse every client once the CRL's nextUpdate has passed: rewrite it before then."""
    authority = _load(ca_dir)
    with _locked(authority.files):
        index = _read_index(authority.files)
        if days is not None:
            _check_positive(timedelta(days=days))
            index["crl_days"] = days
        _write_crl(authority, index, index["crl_days"])
    return authority.files.crl


def listing(ca_dir: Path) -> list[dict[str, Any]]:
    """Every certificate issued, oldest first, each with its state: valid, expired, revoked."""
    files = CaFiles(Path(ca_dir))
    _require_ca(files)
    now = datetime.now(UTC)
    return [{**entry, "state": "revoked" if entry["revoked_at"] else
             "expired" if datetime.fromisoformat(entry["not_after"]) < now else "valid"}
            for entry in _read_index(files)["certificates"]]


def _issue(ca_dir: Path, kind: Kind, name: str, lifetime: timedelta, site: str | None,
           pilot_id: str | None, hosts: Sequence[str],
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Sign a new key's certificate and record it in the index. A host's names and
    addresses are `hosts`, by default its name."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})", field="kind")
    if hosts and kind != "host":
        raise ConfigError(f"only host certificates name hosts, not {kind} ones", field="hosts")
    _check_positive(lifetime)
    authority = _load(ca_dir)
    now = datetime.now(UTC)
    not_after = now + lifetime
    if not_after > authority.cert.not_valid_after_utc:
        raise ConfigError(f"{authority.files.cert}: the CA expires at "
                          f"{authority.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, before "
                          "the certificate would: give it fewer days", field="days")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(_subject(kind, name, site, pilot_id))
               .issuer_name(authority.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(ca=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([
                   ExtendedKeyUsageOID.SERVER_AUTH if kind == "host"
                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   authority.key.public_key()), critical=False))
    if kind == "host":
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [_general_name(host) for host in hosts or (name,)]), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    _record(authority.files, kind, cert)
    return cert, key


def _check_positive(validity: timedelta) -> None:
    if validity <= timedelta(0):
        raise ConfigError(f"a validity of {validity} is not positive", field="days")


def _subject(kind: Kind, name: str, site: str | None, pilot_id: str | None) -> x509.Name:
    if kind != "pilot":
        return _name(name, "name", unit=_UNITS[kind])
    if not site or not pilot_id:
        raise ConfigError("a pilot's certificate needs its site and pilot id",
                          field="site" if not site else "pilot_id")
    # DER order is the reverse of RFC 4514's: this reads CN=pilot ID,OU=pilots,OU=site SITE,...
    attributes = [_attribute(NameOID.ORGANIZATION_NAME, ORGANIZATION, "name"),
                  _attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"site {site}", "site"),
                  _attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _UNITS["pilot"], "name"),
                  _attribute(NameOID.COMMON_NAME, f"pilot {pilot_id}", "pilot_id")]
    return x509.Name(attributes)


def _name(common_name: str, field: str, unit: str | None) -> x509.Name:
    attributes = [_attribute(NameOID.ORGANIZATION_NAME, ORGANIZATION, field)]
    if unit is not None:
        attributes.append(_attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit, field))
    attributes.append(_attribute(NameOID.COMMON_NAME, common_name, field))
    return x509.Name(attributes)


def _attribute(oid: x509.ObjectIdentifier, value: str, field: str) -> x509.NameAttribute:
    try:
        return x509.NameAttribute(oid, value)
    except ValueError as exc:  # empty, or longer than X.509 allows (64 characters)
        raise ConfigError(f"{field} {value!r}: {exc}", field=field) from None


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                         decipher_only=False)


def _file_stem(name: str) -> str:
    """A file name from a certificate name: letters, digits, '.', '-' and '_' kept."""
    stem = "".join(char if char.isalnum() or char in ".-_" else "_" for char in name)
    if not stem.strip("._"):
        raise ConfigError(f"name {name!r}: no usable file name in it", field="name")
    return stem


def _serial_of(authority: _Authority, target: int | str | Path) -> int:
    if isinstance(target, int):
        return target
    path = Path(target)
    if isinstance(target, Path) or path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable PEM certificate: {exc}",
                              field="certificate") from None
        if cert.issuer != authority.cert.subject:
            raise NotFound(f"{path}: issued by {cert.issuer.rfc4514_string()}, not by this CA "
                           f"({authority.cert.subject.rfc4514_string()})", field="certificate")
        return cert.serial_number
    try:
        return int(str(target).replace(":", "").removeprefix("0x"), 16)
    except ValueError:
        raise ConfigError(f"{target!r}: neither a serial (hex, as `tower ca list` shows it) "
                          "nor a certificate file", field="serial") from None


def _load(ca_dir: Path) -> _Authority:
    files = CaFiles(Path(ca_dir))
    _require_ca(files)
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{files.cert}: not a readable PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{files.key}: not a readable unencrypted PEM key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{files.key}: not an EC key")
    return _Authority(files, key, cert)


def _require_ca(files: CaFiles) -> None:
    if not files.cert.is_file():
        raise NotFound(f"{files.directory}: no CA here, {files.cert.name} is missing "
                       "(make one with `tower ca init DIR`)", field="ca")


def _record(files: CaFiles, kind: Kind, cert: x509.Certificate) -> None:
    with _locked(files):
        index = _read_index(files)
        now = datetime.now(UTC)
        # an expired pilot credential can no longer be used nor revoked; forgetting it keeps
        # the index from growing by every pilot ever run
        index["certificates"] = [
            entry for entry in index["certificates"]
            if entry["kind"] != "pilot" or datetime.fromisoformat(entry["not_after"]) > now]
        index["certificates"].append({
            "serial": f"{cert.serial_number:x}", "kind": kind,
            "subject": cert.subject.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(), "revoked_at": None})
        _write_index(files, index)


def _write_crl(authority: _Authority, index: dict[str, Any], days: int) -> None:
    """Sign a CRL of every revoked certificate not yet expired (called with the lock held)."""
    now = datetime.now(UTC)
    index["crl_number"] += 1
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(authority.cert.subject)
               .last_update(now).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   authority.key.public_key()), critical=False))
    for entry in index["certificates"]:
        if entry["revoked_at"] and datetime.fromisoformat(entry["not_after"]) > now:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(entry["serial"], 16))
                .revocation_date(datetime.fromisoformat(entry["revoked_at"])).build())
    crl = builder.sign(authority.key, hashes.SHA256())
    _write_index(authority.files, index)
    _write_public(authority.files.crl, crl.public_bytes(serialization.Encoding.PEM))


@contextmanager
def _locked(files: CaFiles) -> Iterator[None]:
    """Serialise changes to the index, also between processes (two towers, or a CLI)."""
    with open(files.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_index(files: CaFiles) -> dict[str, Any]:
    try:
        return json.loads(files.index.read_text())  # type: ignore[no-any-return]
    except OSError as exc:
        raise ConfigError(f"{files.index}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{files.index}: invalid JSON: {exc}") from None


def _write_index(files: CaFiles, index: dict[str, Any]) -> None:
    _write_public(files.index, (json.dumps(index, indent=1) + "\n").encode())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """A new file, mode 0600 from its creation on (never readable by others, not even
    briefly); an existing file is not overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"{path}: exists already; a private key is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)


def _write_public(path: Path, data: bytes) -> None:
    """Write under a temporary name then rename, so a reader (a server reloading the CRL)
    never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
