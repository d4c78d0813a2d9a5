"""Roles from certificate subjects, and which role may do what."""

from __future__ import annotations

import pytest

from sites.schema import build
from tower.auth.access import AccessSettings, Permission, Role, allows, pilot_of, principal
from tower.errors import ConfigError

SETTINGS = build(AccessSettings, {"roles": [
    {"dn": "CN=Ada,OU=users,O=gridtower", "role": "admin"},
    {"dn": "CN=Max, OU=users, O=gridtower", "role": "manager"},
    {"pattern": "CN=*,OU=robots,O=gridtower", "role": "reader"},
    {"dn": "CN=Sam,OU=users,O=gridtower", "role": "siteadmin", "site": "nersc"},
]}, "tower.yaml", prefix="access")
PILOT = "O=gridtower,OU=pilots,OU=site nersc,CN=pilot 0a1b"


@pytest.mark.parametrize(("dn", "roles"), [
    ("CN=Ada,OU=users,O=gridtower", {Role.ADMIN}),
    ("cn=max,ou=users,o=gridtower", {Role.MANAGER}),  # case and spaces do not matter
    ("CN=monitor,OU=robots,O=gridtower", {Role.READER}),
    ("CN=Sam,OU=users,O=gridtower", {Role.SITEADMIN}),
    ("CN=Eve,OU=users,O=elsewhere", set()),
    (PILOT, {Role.PILOT}),
])
def test_roles_come_from_exact_dns_and_patterns(dn: str, roles: set[Role]) -> None:
    assert principal(dn, SETTINGS).roles == roles


def test_a_pilot_certificate_names_its_site_and_pilot() -> None:
    assert pilot_of(PILOT) == ("nersc", "0a1b")
    assert principal(PILOT, SETTINGS).pilot == ("nersc", "0a1b")
    assert pilot_of("CN=pilot 0a1b,OU=users,O=gridtower") is None  # a user named so
    assert pilot_of("not a dn") is None


@pytest.mark.parametrize(("dn", "read", "manage", "own_pilot", "other_pilot"), [
    ("CN=Ada,OU=users,O=gridtower", True, True, True, True),
    ("CN=Max,OU=users,O=gridtower", True, True, False, False),
    ("CN=monitor,OU=robots,O=gridtower", True, False, False, False),
    ("CN=Sam,OU=users,O=gridtower", True, False, False, False),
    ("CN=Eve,OU=users,O=elsewhere", False, False, False, False),
    (PILOT, False, False, True, False),
    (None, False, False, False, False),
])
def test_what_each_role_may_do(dn: str | None, read: bool, manage: bool, own_pilot: bool,
                               other_pilot: bool) -> None:
    who = principal(dn, SETTINGS)
    assert allows(who, Permission.READ, anonymous_read=False) is read
    assert allows(who, Permission.MANAGE, anonymous_read=False) is manage
    # whoever may read with a certificate may file a request for a manager
    assert allows(who, Permission.REQUEST, anonymous_read=True) is read
    assert allows(who, Permission.PILOT, False, pilot_id="0a1b") is own_pilot
    assert allows(who, Permission.PILOT, False, pilot_id="ffff") is other_pilot


def test_anonymous_reading_is_a_choice() -> None:
    nobody = principal(None, SETTINGS)
    assert allows(nobody, Permission.READ, anonymous_read=True)
    assert not allows(nobody, Permission.MANAGE, anonymous_read=True)
    assert not allows(nobody, Permission.REQUEST, anonymous_read=True)


@pytest.mark.parametrize(("grant", "words"), [
    ({"role": "reader"}, "either dn or pattern"),
    ({"dn": "CN=a", "pattern": "CN=*", "role": "reader"}, "either dn or pattern"),
    ({"dn": "CN=a", "role": "pilot"}, "not granted"),
    ({"dn": "CN=a", "role": "siteadmin"}, "site goes with"),
    ({"dn": "CN=a", "role": "reader", "site": "x"}, "site goes with"),
    ({"dn": "CN=a", "role": "owner"}, "roles.0.role"),
])
def test_a_bad_grant_is_refused_naming_it(grant: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match="access.roles.0") as caught:
        build(AccessSettings, {"roles": [grant]}, "tower.yaml", prefix="access")
    assert words in str(caught.value)
