"""The API's TLS: a server context that verifies client certificates against the CA
bundle and the CRLs, made anew when the CRLs change, and the cheroot adapter serving it.

The client certificate is optional at the TLS layer, so an anonymous reader can be
let in by the API's configuration; a certificate that is shown must verify (trusted
CA, within its validity, not revoked, meant for client authentication) or the
handshake fails. The subject of a verified certificate goes into each request's
WSGI environ (`web.identity`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

from tower.config import TlsSettings
from tower.errors import ConfigError
from web.identity import ENVIRON_KEY, subject_of

log = logging.getLogger(__name__)

#: The CRLs' files are looked at (stat) at most this often: a revocation takes effect
#: within this many seconds, without a restart.
CRL_CHECK_SECONDS = 2.0
#: The longest a client may take over its handshake (cheroot shakes hands in the thread
#: that accepts connections, so a silent client holds up the others this long at most).
HANDSHAKE_SECONDS = 5.0
#: Files read from a directory given as ca_bundle or crl (fetch-crl writes HASH.r0).
CA_SUFFIXES = (".pem", ".crt")
CRL_SUFFIXES = (".pem", ".crl", ".r0")


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the server's certificate, verifying clients'."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # no resumption from tickets: each connection is a full handshake, so a certificate
    # revoked or expired since the last one is refused on the next connection
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    _load("api.tls.cert", tls.cert, lambda path: context.load_cert_chain(path, tls.key))
    context.verify_mode = ssl.CERT_OPTIONAL
    for path in _files(tls.ca_bundle, CA_SUFFIXES, "api.tls.ca_bundle"):
        _load("api.tls.ca_bundle", path, lambda path: context.load_verify_locations(path))
    if tls.crl is not None:
        for path in _files(tls.crl, CRL_SUFFIXES, "api.tls.crl"):
            _load("api.tls.crl", path, lambda path: context.load_verify_locations(path))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class TlsAdapter(BuiltinSSLAdapter):
    """cheroot's adapter for the standard library's ssl, with the context above, renewed
    when the CRLs change, and the verified subject in the environ."""

    def __init__(self, tls: TlsSettings) -> None:
        crl_state = _state(tls.crl)
        context = server_context(tls)  # first, so that a bad file is named as a setting
        super().__init__(str(tls.cert), str(tls.key))
        self.context = context
        self._tls = tls
        self._crl_state = crl_state
        self._checked = time.monotonic()

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """Shake hands on a new connection; the environ entries of all its requests.
        (cheroot calls this in its one accepting thread.)"""
        self._renew_if_crl_changed()
        sock.settimeout(HANDSHAKE_SECONDS)
        tls_sock, environ = super().wrap(sock)
        # the handshake verified this certificate, or it would have failed
        der = tls_sock.getpeercert(binary_form=True)
        environ[ENVIRON_KEY] = subject_of(der) if der else None
        return tls_sock, environ

    def _renew_if_crl_changed(self) -> None:
        now = time.monotonic()
        if self._tls.crl is None or now - self._checked < CRL_CHECK_SECONDS:
            return
        self._checked = now
        state = _state(self._tls.crl)
        if state == self._crl_state:
            return
        try:
            self.context = server_context(self._tls)
        except ConfigError as error:
            # serve on with the lists read last; tried again at the next check
            log.error("CRL not reloaded, the previous one stays in force: %s", error)
            return
        self._crl_state = state
        log.info("CRL reloaded from %s", self._tls.crl)


def _files(path: Path, suffixes: tuple[str, ...], key: str) -> list[Path]:
    """`path` itself, or the files of the directory `path` with one of `suffixes`."""
    if not path.is_dir():
        return [path]
    found = sorted(entry for entry in path.iterdir()
                   if entry.suffix in suffixes and entry.is_file())
    if not found:
        raise ConfigError(f"{key}: {path}: no {', '.join(suffixes)} file in this directory",
                          field=key)
    return found


def _load(key: str, path: Path, load: Callable[[Path], object]) -> None:
    try:
        load(path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}: {path}: cannot load: {exc}", field=key) from None


def _state(path: Path | None) -> tuple[tuple[str, int, int, int], ...]:
    """What tells that the CRLs changed: name, inode (a file replaced), size and mtime."""
    if path is None:
        return ()
    try:
        paths = sorted(path.iterdir()) if path.is_dir() else [path]
        stats = [(str(p), p.stat()) for p in paths]
    except OSError:
        return ()  # gone for a moment (being replaced): looked at again next time
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)
