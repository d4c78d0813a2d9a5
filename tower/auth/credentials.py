"""Pilot credentials: each pilot gets a certificate of its own from the tower's CA, bound to
its site and pilot id (its subject names both; `tower.auth.access` reads them back), valid for
the pilot's walltime plus a margin, written at the site as a 0600 file in its scratch.

The files travel through the site's runner (locally, or over the site's SSH
connection) with `umask 077`, so the key is never readable by others, not even
for an instant; the values reach the shell as arguments, never inside its script.
"""

from __future__ import annotations

from sites.config import SiteConfig
from tower.errors import BackendError, ConfigError
from tower.runtime import Runtime

#: Seconds a credential outlives its pilot's walltime (queueing, draining, goodbye).
MARGIN = 3600
#: Writes stdin to "$1/$2", owner-only; the arguments are never part of the script.
WRITE = 'umask 077 && mkdir -p "$1" && cat > "$1/$2"'


def deliver(runtime: Runtime, site: SiteConfig, pilot_id: str,
            carried: dict[str, str] | None = None) -> list[str]:
    """Mint and place the pilot's credential; the pilot arguments that point to it (none
    when the API asks for no certificates). With `carried`, the files go there, by name,
    for a batch system that sends them with the pilot's job into its working directory."""
    tls = runtime.config.api.tls
    if tls is None:
        return []
    if tls.pilot_ca is None:
        raise ConfigError(f"{runtime.config.path}: api.tls.pilot_ca: needed to give pilots "
                          "their credentials (the directory of `tower ca init`)",
                          field="api.tls.pilot_ca")
    from tower.auth import ca

    pem = ca.issue_pilot_credential(tls.pilot_ca, site.name, pilot_id,
                                    int(site.pilot.walltime) + MARGIN)
    files = {f"{pilot_id}.pem": pem.decode(),
             "tower-ca.pem": (tls.pilot_ca / "ca.crt").read_text()}
    if carried is not None:
        carried.update(files)
        return ["--credential", f"{pilot_id}.pem", "--tower-ca", "tower-ca.pem"]
    directory = f"{site.scratch}/credentials"
    for name, text in files.items():
        _write(runtime, site, directory, name, text)
    return ["--credential", f"{directory}/{pilot_id}.pem",
            "--tower-ca", f"{directory}/tower-ca.pem"]


def _write(runtime: Runtime, site: SiteConfig, directory: str, name: str, text: str) -> None:
    done = runtime.runner(site.name).run(["sh", "-c", WRITE, "credential", directory, name],
                                         input=text)
    if done.code != 0:
        raise BackendError(f"site {site.name}: cannot write {directory}/{name}: "
                           f"{done.stderr.strip()[-300:]}")
