"""X.509 proxy certificates (RFC 3820), as a grid service asks for them when it delegates.

A Computing Element that wants to act for the tower (stage data, renew what it holds)
sends a certificate request; the tower signs it with its robot key into a proxy: the
robot's subject plus one CN (the proxy's serial), a ProxyCertInfo extension that
inherits all the robot's rights, valid no longer than the robot certificate itself.
The CE gets the proxy and the robot certificate behind it; the robot key never leaves.
"""

from __future__ import annotations

import base64
import datetime
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sites.errors import BackendError

#: id-pe-proxyCertInfo, and its DER value: a ProxyPolicy of id-ppl-inheritAll without a
#: path length constraint (SEQUENCE { SEQUENCE { OID 1.3.6.1.5.5.7.21.1 } }).
PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")
#: Clock skew between the tower and the CE that a fresh proxy tolerates.
SKEW = datetime.timedelta(minutes=5)


def sign_proxy(request_pem: bytes, cert_pem: bytes, key_pem: bytes, lifetime: float) -> bytes:
    """The proxy for `request_pem` signed by the robot (`cert_pem`, `key_pem`), valid for
    `lifetime` seconds or until the robot certificate ends, followed by that certificate."""
    public_key = request_key(request_pem)
    issuer = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise BackendError("the robot key must be an RSA or EC key to sign proxies")
    now = datetime.datetime.now(datetime.UTC)
    serial = secrets.randbits(62)
    subject = x509.Name([*issuer.subject, x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    ends = min(now + datetime.timedelta(seconds=lifetime), issuer.not_valid_after_utc)
    proxy = (x509.CertificateBuilder()
             .subject_name(subject).issuer_name(issuer.subject)
             .public_key(public_key).serial_number(serial)
             .not_valid_before(now - SKEW).not_valid_after(ends)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                          content_commitment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False,
                                          decipher_only=False), critical=True)
             .add_extension(x509.UnrecognizedExtension(PROXY_CERT_INFO, INHERIT_ALL),
                            critical=True)
             .sign(key, hashes.SHA256()))
    return (proxy.public_bytes(serialization.Encoding.PEM)
            + issuer.public_bytes(serialization.Encoding.PEM))


def request_key(request_pem: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The public key of a PEM certificate request. Read from its DER by hand: ARC writes
    requests of version 2, which `cryptography` refuses (PKCS #10 knows only version 1);
    the request's signature proves nothing the CE's authenticated TLS did not."""
    try:
        body = b"".join(line.strip() for line in request_pem.splitlines()
                        if line.strip() and not line.startswith(b"-----"))
        info, _ = _element(_element(base64.b64decode(body, validate=True))[0])
        _, rest = _element(info)          # version
        _, rest = _element(rest)          # subject
        spki = rest[:len(rest) - len(_element(rest)[1])]
        key = serialization.load_der_public_key(spki)
    except (ValueError, IndexError) as exc:
        raise BackendError(f"the CE's delegation request is not a certificate request: {exc}"
                           ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise BackendError(f"the CE's delegation request holds a {type(key).__name__}, "
                           "not an RSA or EC key")
    return key


def _element(der: bytes) -> tuple[bytes, bytes]:
    """The contents of the first DER element of `der`, and what follows it."""
    length, start = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[2:2 + count], "big"), 2 + count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return der[start:start + length], der[start + length:]


def not_after(pem: bytes) -> datetime.datetime:
    """When the first certificate of `pem` ends (UTC)."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def subject(pem: bytes) -> str:
    """The subject of the first certificate of `pem`, as OpenSSL writes it."""
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
