"""Who is calling, as the transport proved it: a subject DN in the WSGI environ.

The TLS layer (`web/tls.py`) puts there the subject of the client certificate the
handshake verified; a trusted reverse proxy may name it in a header instead
(`ProxiedIdentity`). Nothing else sets it, and no request header can: headers
reach the environ as `HTTP_*` keys. DNs are RFC 4514 strings, as
`cryptography`'s `Name.rfc4514_string()` writes them.

A proxy's DN is read as OpenSSL prints it (nginx's `$ssl_client_s_dn`, Apache's
`SSL_CLIENT_S_DN` with `LegacyDNStringFormat` off): RFC 4514 with OpenSSL's short names,
some of which (emailAddress, serialNumber...) RFC 4514 does not list, and UTF-8 escaped
as `\\XX` pairs. It is rewritten as the TLS layer would write it, so a grant names a caller
the same way whichever way the certificate came.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

#: The environ key holding the caller's DN, or None for a caller without a certificate.
ENVIRON_KEY = "gridtower.identity"
#: OpenSSL's short names of DN attributes that RFC 4514 (and so `cryptography`) lacks.
OPENSSL_NAMES = {
    "emailAddress": NameOID.EMAIL_ADDRESS, "serialNumber": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME, "GN": NameOID.GIVEN_NAME, "title": NameOID.TITLE,
    "initials": NameOID.INITIALS, "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER, "pseudonym": NameOID.PSEUDONYM,
    "postalCode": NameOID.POSTAL_CODE, "businessCategory": NameOID.BUSINESS_CATEGORY,
    "street": NameOID.STREET_ADDRESS, "jurisdictionC": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionST": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "jurisdictionL": NameOID.JURISDICTION_LOCALITY_NAME,
}


def identity() -> str | None:
    """The DN of the current Flask request's caller; None when it showed no certificate."""
    return request.environ.get(ENVIRON_KEY)


def subject_of(der: bytes) -> str:
    """The subject of a DER certificate, as an RFC 4514 string."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class ProxiedIdentity:
    """WSGI middleware: the identity header of a trusted proxy becomes the identity; from
    any other address the header is dropped, so no client can name itself."""

    def __init__(self, app: WSGIApplication, trusted_proxies: Iterable[str],
                 header: str) -> None:
        self._app = app
        self._trusted = frozenset(trusted_proxies)
        self._key = "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes] | Iterator[bytes]:
        forwarded = environ.pop(self._key, None)
        if client_address(environ.get("REMOTE_ADDR", "")) in self._trusted:
            # the proxy speaks for its client: without the header the caller is anonymous,
            # never the proxy itself
            environ[ENVIRON_KEY] = _dn(forwarded, environ["REMOTE_ADDR"])
        else:
            environ.setdefault(ENVIRON_KEY, None)
        return self._app(environ, start_response)


def client_address(remote: str) -> str:
    """The client's address as trusted_proxies writes it (an IPv4 client of a dual-stack
    socket shows as ::ffff:a.b.c.d)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def _dn(value: str | None, proxy: str) -> str | None:
    """The proxy's DN, rewritten as RFC 4514 names it here; None if absent or malformed."""
    if not value or not value.strip():
        return None
    try:
        return x509.Name.from_rfc4514_string(value.strip(), OPENSSL_NAMES).rfc4514_string()
    except ValueError:
        log.warning("proxy=%s sent an identity that is not an RFC 4514 DN: %r", proxy, value)
        return None
