"""The API's TLS: a server context that verifies client certificates against the CA
bundle and the CRLs, made anew when the CRLs change.

The client certificate is optional at the TLS layer, so an anonymous reader can be
let in by the API's configuration; a certificate that is shown must verify (trusted
CA, within its validity, not revoked, meant for client authentication) or the
handshake fails. The subject of a verified certificate goes into each request's
WSGI environ (`web.identity`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from tower.config import TlsSettings
from tower.errors import ConfigError
from web.identity import subject_of

log = logging.getLogger(__name__)

#: The CRLs' files are looked at (stat) at most this often: a revocation takes effect
#: within this many seconds, without a restart.
CRL_CHECK_SECONDS = 2.0
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


class TlsContexts:
    """The server context of the moment: made anew when the CRLs changed, so a revocation
    takes effect on the next connection without a restart. Each connection shakes hands
    with the context `current()` gives when it starts (web/front.py)."""

    def __init__(self, tls: TlsSettings) -> None:
        self._tls = tls
        self._crl_state = _state(tls.crl)
        self._context = server_context(tls)  # a bad file is named as a setting
        self._checked = time.monotonic()

    def current(self) -> ssl.SSLContext:
        self._renew_if_crl_changed()
        return self._context

    def _renew_if_crl_changed(self) -> None:
        now = time.monotonic()
        if self._tls.crl is None or now - self._checked < CRL_CHECK_SECONDS:
            return
        self._checked = now
        state = _state(self._tls.crl)
        if state == self._crl_state:
            return
        try:
            self._context = server_context(self._tls)
        except ConfigError as error:
            # serve on with the lists read last; tried again at the next check
            log.error("CRL not reloaded, the previous one stays in force: %s", error)
            return
        self._crl_state = state
        log.info("CRL reloaded from %s", self._tls.crl)


class TlsStream:
    """The server side of TLS over a plain asyncio stream, driven by hand (an SSLObject on
    memory BIOs). asyncio's own TLS layer drops the alert that tells a client why its
    handshake failed (an expired or revoked certificate); this one sends it."""

    def __init__(self, context: ssl.SSLContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, read_bytes: int) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._reader = reader
        self._writer = writer
        self._read_bytes = read_bytes

    async def handshake(self) -> str | None:
        """Shake hands; the subject of the client certificate it verified (the handshake
        fails otherwise), None for a client that showed none."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.drain()
                await self._fill()
            except ssl.SSLEOFError:
                raise ConnectionResetError("closed during the handshake") from None
            except ssl.SSLError:
                await self.drain()  # the alert
                raise
        await self.drain()
        der = self._tls.getpeercert(binary_form=True)
        return subject_of(der) if der else None

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes of plain text; b"" at the end."""
        while True:
            try:
                data = self._tls.read(size)
                self._flush()
                return data
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._writer.write(data)

    async def _fill(self) -> bool:
        data = await self._reader.read(self._read_bytes)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True


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
