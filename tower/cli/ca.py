"""`tower ca init, issue, revoke, crl, list`: a small certificate authority for the
API's HTTPS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tower.cli.common import Group, json_option, print_json, table


@click.group(cls=Group)
def ca() -> None:
    """a small certificate authority for the API's HTTPS: `ca init DIR`, `ca issue KIND
    NAME --ca DIR`, `ca revoke`, `ca crl`, `ca list`"""


def ca_dir(function: Any) -> Any:
    return click.option("--ca", "directory", type=click.Path(path_type=Path), required=True,
                        metavar="DIR", help="the CA directory")(function)


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--name", default="gridtower CA", show_default=True, help="the CA's common name")
@click.option("--days", type=int, help="validity (default: ten years)")
@json_option
def init(directory: Path, name: str, days: int | None, as_json: bool) -> int:
    """make a CA in DIR: its key (0600), certificate, an empty CRL and the index of issued
    certificates"""
    from tower.auth import ca as authority

    made = authority.init_ca(directory, name, authority.CA_DAYS if days is None else days)
    paths = {"cert": str(made.cert), "key": str(made.key), "crl": str(made.crl),
             "index": str(made.index)}
    if as_json:
        print_json(paths)
    else:
        print("\n".join(f"wrote {path}" for path in paths.values()))
    return 0


@ca.command()
@click.argument("kind", type=click.Choice(["user", "robot", "host"]))
@click.argument("name", metavar="NAME")
@ca_dir
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="where to write (default: the CA's issued/)")
@click.option("--days", type=int, help="validity (default: one year)")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="host: a DNS name or IP address it serves (repeatable; default NAME)")
@json_option
def issue(kind: str, name: str, directory: Path, out: Path | None, days: int | None,
          hosts: tuple[str, ...], as_json: bool) -> int:
    """issue a certificate and its key (0600): for a person (user), a script (robot) or a
    server (host); NAME is the subject's common name, and the files are NAME.crt and
    NAME.key"""
    from tower.auth import ca as authority

    cert, key = authority.issue(directory, kind, name,  # type: ignore[arg-type]
                                authority.CERT_DAYS if days is None else days,
                                hosts=list(hosts), out=out)
    if as_json:
        print_json({"cert": str(cert), "key": str(key)})
    else:
        print(f"wrote {cert}\nwrote {key}")
    return 0


@ca.command()
@click.argument("target", metavar="SERIAL|CERT")
@ca_dir
@json_option
def revoke(target: str, directory: Path, as_json: bool) -> int:
    """revoke a certificate, by serial (in hex, as `ca list` shows it) or file; the CRL is
    written anew (servers read it within seconds)"""
    from tower.auth import ca as authority

    serial = authority.revoke(directory, target)
    crl = authority.CaFiles(directory).crl
    if as_json:
        print_json({"revoked": f"{serial:x}", "crl": str(crl)})
    else:
        print(f"revoked serial {serial:x}; wrote {crl}")
    return 0


@ca.command()
@ca_dir
@click.option("--days", type=int, help="validity (default: as last time, first 30)")
@json_option
def crl(directory: Path, days: int | None, as_json: bool) -> int:
    """sign the CRL anew; do so before it expires, or servers refuse every client"""
    from tower.auth import ca as authority

    written = authority.write_crl(directory, days)
    if as_json:
        print_json({"crl": str(written)})
    else:
        print(f"wrote {written}")
    return 0


@ca.command("list")
@ca_dir
@json_option
def list_certificates(directory: Path, as_json: bool) -> int:
    """certificates issued, with their state"""
    from tower.auth import ca as authority

    rows = authority.listing(directory)
    if as_json:
        print_json({"certificates": rows})
        return 0
    if not rows:
        print("no certificates issued")
    print("\n".join(table([[row["serial"], row["kind"], row["state"],
                            f"until {row['not_after'][:16]}", row["subject"]] for row in rows])))
    return 0


COMMANDS = [ca]
