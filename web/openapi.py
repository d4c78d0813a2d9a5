"""The OpenAPI 3.1 document of the API, made from the routes themselves: every route under
/api/v1 with its method, path parameters, the permission it needs, its request body's
JSON schema (from the view's pydantic model) and the JSON error answers; and /healthz and
/readyz, at the server's root (a `servers` of their own)."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from flask import Flask

from sites.schema import MAX_ID
from web.auth import body_model, permission_of
from web.health import READY_CHECKS

PREFIX = "/api/v1"
_PARAMETER = re.compile(r"<(?:(\w+):)?(\w+)>")
_TYPES = {"int": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
          "path": {"type": "string"}, None: {"type": "string"}}
ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string"}, "message": {"type": "string"},
    "field": {"type": ["string", "null"], "description": "the offending field"}}}
COMPONENT = "#/components/schemas/"
#: Routes at the server's root, outside /api/v1.
ROOT_PATHS = ("/healthz", "/readyz")
HEALTH = {"type": "object", "required": ["status", "checks"], "properties": {
    "status": {"enum": ["ok", "failing"]},
    "checks": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["ok"], "properties": {
            "ok": {"type": "boolean"},
            "reason": {"type": "string", "description": "why not, in a few words"}}}}}}
ANSWERS = {"400": "invalid request (the message names the field)",
           "401": "a client certificate is required",
           "403": "the certificate's roles do not allow this",
           "404": "no such object", "409": "conflict with the object's state"}


def document(app: Flask) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR, "Health": HEALTH}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        root = rule.rule in ROOT_PATHS
        if not rule.rule.startswith(PREFIX + "/") and not root:
            continue
        view = app.view_functions[rule.endpoint]
        path = rule.rule if root else _PARAMETER.sub(r"{\2}", rule.rule[len(PREFIX):])
        if root:
            paths[path] = {"servers": [{"url": "/"}]}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = (_health_operation(view) if root else
                         _operation(rule.rule, rule.endpoint, view, schemas))
            # one view may serve several routes: the id names the route
            operation["operationId"] = method.lower() + re.sub(r"\W+", "_", path).rstrip("_")
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "gridtower API", "version": version("gridtower")},
        "servers": [{"url": PREFIX}],
        "components": {"schemas": schemas},
        "paths": paths,
    }


def _operation(rule: str, endpoint: str, view: Any, schemas: dict[str, Any]
               ) -> dict[str, Any]:
    doc = (view.__doc__ or endpoint.rsplit(".", 1)[-1].replace("_", " ")).strip()
    permission = permission_of(view)
    operation: dict[str, Any] = {
        "summary": doc.splitlines()[0],
        "x-permission": str(permission) if permission else None,
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": _TYPES.get(kind or None, {"type": "string"})}
                       for kind, name in _PARAMETER.findall(rule)],
        "responses": {"200": {"description": "done", "content": {
            "application/json": {"schema": {"type": "object"}}}},
            **{code: {"description": text, "content": {"application/json": {
                "schema": {"$ref": COMPONENT + "Error"}}}}
               for code, text in ANSWERS.items()}},
    }
    model = body_model(view)
    if model is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _body_schema(model, schemas)}}}
    return operation


def _health_operation(view: Any) -> dict[str, Any]:
    answer = {"application/json": {"schema": {"$ref": COMPONENT + "Health"}}}
    return {
        "summary": (view.__doc__ or "").strip().splitlines()[0],
        "x-permission": str(permission_of(view)),
        "parameters": [{"name": "exclude", "in": "query", "required": False,
                        "schema": {"type": "array", "items": {"enum": list(READY_CHECKS)}},
                        "style": "form", "explode": True}] if view.__name__ == "readyz" else [],
        "responses": {"200": {"description": "every check is ok", "content": answer},
                      "503": {"description": "a check is failing", "content": answer},
                      "400": {"description": "an unknown check named", "content": {
                          "application/json": {"schema": {"$ref": COMPONENT + "Error"}}}}},
    }


def _body_schema(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """`model`'s JSON schema, its nested models moved to the document's components (a
    `$ref` in an OpenAPI document resolves against the document, not the schema)."""
    schema = model.model_json_schema(ref_template=COMPONENT + "{model}")
    schemas.update(schema.pop("$defs", {}))
    return dict(schema)
