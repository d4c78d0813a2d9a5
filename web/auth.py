"""Authorization of every API request, before its view runs.

Each view declares the permission it needs with :func:`needs`; a view that
declares none is refused (deny by default), so a new endpoint cannot be
left open by forgetting. The caller's identity comes from the TLS layer
(`web.identity`); without TLS configured, the API serves loopback HTTP to
trusted local callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from pydantic import BaseModel

from tower.auth.access import TRUSTED, Permission, Principal, allows, principal
from tower.errors import Forbidden, Unauthorized
from tower.runtime import Runtime
from web.identity import identity

View = TypeVar("View", bound=Callable[..., Any])


def needs(permission: Permission, body: type[BaseModel] | None = None
          ) -> Callable[[View], View]:
    """Declare the permission a view needs, and the model of its JSON body if it takes one
    (the OpenAPI document is made from both)."""
    def mark(view: View) -> View:
        view.permission = permission  # type: ignore[attr-defined]
        view.body_model = body  # type: ignore[attr-defined]
        return view
    return mark


def permission_of(view: Callable[..., Any]) -> Permission | None:
    return getattr(view, "permission", None)


def body_model(view: Callable[..., Any]) -> type[BaseModel] | None:
    return getattr(view, "body_model", None)


def install(app: Flask) -> None:
    app.before_request(_authorize)


def caller() -> Principal:
    """Who makes the current request (set by the check before the view)."""
    return g.principal  # type: ignore[no-any-return]


def _authorize() -> None:
    runtime: Runtime = current_app.extensions["gridtower"]
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return  # no such route: Flask answers 404
    permission = permission_of(view)
    if runtime.config.api.tls is None:
        g.principal = TRUSTED  # loopback HTTP: the tower's own machine
        return
    who = principal(identity(), runtime.config.access)
    g.principal = who
    if permission is None:
        raise Forbidden(f"{request.endpoint}: no permission is declared for this endpoint")
    pilot_id = (request.view_args or {}).get("pilot_id")
    if allows(who, permission, runtime.config.access.anonymous_read, pilot_id):
        return
    if who.anonymous:
        raise Unauthorized(f"{request.method} {request.path}: a client certificate is "
                           "required")
    raise Forbidden(f"{request.method} {request.path}: {who.dn} may not ({permission})")
