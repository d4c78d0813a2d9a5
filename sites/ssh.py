"""Opening an SSH connection the way every part of the tower must: verified host, key only.

The batch runner (sites/runner.py) and the SFTP transfer backend both connect
through `connect`, so the rules live in one place: the host key must already
be in the configured known_hosts (an unknown or changed key is refused, never
added), authentication is by the configured private key alone (no agent, no
other keys, no password), and every wait is bounded by the access's timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sites.config import SshAccess
from sites.errors import BackendError

if TYPE_CHECKING:
    import paramiko


#: paramiko's words, exactly, when the server does not complete the handshake in time.
HANDSHAKE_TIMEOUT = ("Error reading SSH protocol banner", "No existing session")


def endpoint(access: SshAccess, scheme: str = "ssh") -> str:
    """`ssh://user@host:port`: where a connection goes, for messages (no secret in it)."""
    return f"{scheme}://{access.user}@{access.host}:{access.port}"


def connect(access: SshAccess, where: str | None = None,
            field: str = "ssh.known_hosts") -> paramiko.SSHClient:
    """A connected, authenticated client for `access`; BackendError if it cannot be had.

    `where` prefixes the messages (default: `endpoint(access)`); `field` is the
    configuration key that host-key errors point at.
    """
    import paramiko

    where = where or endpoint(access)
    client = paramiko.SSHClient()
    known_hosts = Path(access.known_hosts).expanduser()
    try:
        client.load_host_keys(str(known_hosts))
    except OSError as exc:
        raise BackendError(f"{where}: known_hosts {known_hosts}: {exc.strerror}",
                           field=field) from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(access.host, port=access.port, username=access.user,
                       key_filename=str(Path(access.key_file).expanduser()),
                       timeout=access.timeout, banner_timeout=access.timeout,
                       auth_timeout=access.timeout, channel_timeout=access.timeout,
                       allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException:
        client.close()
        raise BackendError(f"{where}: the host key differs from the one in "
                           f"{known_hosts}: refused (it may have been replaced, or this "
                           "is not the host it claims to be)",
                           field=field) from None
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise BackendError(f"{where}: host key unknown: add it to {known_hosts} "
                               "(gridtower never accepts an unknown key)",
                               field=field) from None
        if str(exc) in HANDSHAKE_TIMEOUT:
            raise BackendError(f"{where}: no SSH handshake within {access.timeout}s") from None
        raise BackendError(f"{where}: {exc}") from None
    except (OSError, EOFError) as exc:
        client.close()
        raise BackendError(f"{where}: {str(exc) or type(exc).__name__}") from None
    return client
