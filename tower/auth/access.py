"""Who may do what: roles granted to certificate subjects (DNs), and the permission check.

Roles: `admin` (everything), `manager` (productions, jobs, retries, the
catalog), `siteadmin` of one site (reading, and that site's pilots), `reader`
(reading), and `pilot` — never granted in the config: a pilot's certificate,
minted by the tower's CA, names its site and pilot id in its subject
(`CN=pilot ID,OU=site SITE,OU=pilots,...`), and it may make that one pilot's
calls and nothing else. Grants match a DN exactly or by an fnmatch pattern.
Without TLS (the embedded default, HTTP on loopback) every local caller is
trusted.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass

from pydantic import Field, model_validator

from sites.schema import Strict


class Role(enum.StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    SITEADMIN = "siteadmin"
    READER = "reader"
    PILOT = "pilot"


class Permission(enum.StrEnum):
    READ = "read"        # any GET of status, jobs, pilots, sites, catalog
    MANAGE = "manage"    # change productions and jobs, verify the catalog
    REQUEST = "request"  # file a production as a request, for a manager to approve
    PILOT = "pilot"      # a pilot's own calls (register, claim, heartbeat, report, ...)
    PUBLIC = "public"    # anyone, without a certificate: /healthz and /readyz, which tell nothing


class Grant(Strict):
    """One line of `access.roles`: a DN (exact) or a pattern, and the role it gets."""

    dn: str | None = Field(default=None, min_length=1)
    pattern: str | None = Field(default=None, min_length=1)
    role: Role
    #: The site of a siteadmin.
    site: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Grant:
        if (self.dn is None) == (self.pattern is None):
            raise ValueError("give either dn or pattern")
        if self.role is Role.PILOT:
            raise ValueError("the pilot role is not granted: pilots get certificates of "
                             "their own from the factory")
        if (self.role is Role.SITEADMIN) != (self.site is not None):
            raise ValueError("site goes with the siteadmin role, and only with it")
        return self

    def matches(self, dn: str) -> bool:
        if self.dn is not None:
            return _normal(self.dn) == _normal(dn)
        return fnmatch.fnmatchcase(_normal(dn), _normal(self.pattern or ""))


class AccessSettings(Strict):
    #: Reading without a certificate (status, jobs, catalog); off by default.
    anonymous_read: bool = False
    roles: list[Grant] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as far as the TLS layer proved it."""

    dn: str | None
    roles: frozenset[Role]
    #: Sites this principal administers.
    sites: frozenset[str] = frozenset()
    #: (site, pilot id) for a pilot's certificate.
    pilot: tuple[str, str] | None = None

    @property
    def anonymous(self) -> bool:
        return self.dn is None


TRUSTED = Principal("local", frozenset({Role.ADMIN}))


def principal(dn: str | None, settings: AccessSettings) -> Principal:
    """The roles of `dn` (None: no certificate)."""
    if dn is None:
        return Principal(None, frozenset())
    pilot = pilot_of(dn)
    if pilot is not None:
        return Principal(dn, frozenset({Role.PILOT}), pilot=pilot)
    grants = [grant for grant in settings.roles if grant.matches(dn)]
    return Principal(dn, frozenset(grant.role for grant in grants),
                     frozenset(grant.site for grant in grants if grant.site))


def pilot_of(dn: str) -> tuple[str, str] | None:
    """(site, pilot id) when `dn` is a pilot certificate's subject."""
    # here, not at the top: tower.config imports this module, and every command pays for
    # the config, while only the API parses subjects
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        name = x509.Name.from_rfc4514_string(dn)
    except ValueError:
        return None
    units = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    common = [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
    sites = [unit.removeprefix("site ") for unit in units if unit.startswith("site ")]
    if "pilots" not in units or len(sites) != 1 or len(common) != 1 \
            or not common[0].startswith("pilot "):
        return None
    return sites[0], common[0].removeprefix("pilot ")


def allows(who: Principal, permission: Permission, anonymous_read: bool,
           pilot_id: str | None = None) -> bool:
    """Whether `who` may act with `permission` (on pilot `pilot_id`'s calls)."""
    if Role.ADMIN in who.roles or permission is Permission.PUBLIC:
        return True
    if permission is Permission.PILOT:
        return who.pilot is not None and who.pilot[1] == pilot_id
    if permission is Permission.MANAGE:
        return Role.MANAGER in who.roles
    if permission is Permission.REQUEST:  # a collaborator with a certificate, never anonymous
        return bool(who.roles & {Role.MANAGER, Role.SITEADMIN, Role.READER})
    if who.anonymous:
        return anonymous_read
    return bool(who.roles & {Role.MANAGER, Role.SITEADMIN, Role.READER})


def _normal(dn: str) -> str:
    """A DN compared without case or spaces around its separators."""
    return ",".join(part.strip() for part in dn.split(",")).casefold()
