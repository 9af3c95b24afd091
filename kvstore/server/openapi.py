"""The OpenAPI 3.1 description of the client routes, built from the router's route table.

Each client route must have an operation here: ``build_openapi`` refuses a route it cannot describe,
so a route cannot be added without documenting it.
"""

from __future__ import annotations

from typing import Any

from kvstore.server.router import Route

_ERROR = {"$ref": "#/components/responses/Error"}
_KEY_PARAM = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "Percent-encoded UTF-8; may contain '/'.",
    "schema": {"type": "string"},
}
_JSON_OR_MSGPACK_ANY = {"application/json": {"schema": {"type": "object"}}, "application/msgpack": {}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}, "application/msgpack": {}}}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


_WRITTEN = _obj(key={"type": "string"}, version={"type": "integer"})
_DELETED = _obj(key={"type": "string"}, deleted={"type": "boolean"})
_VALUE_PROPS = {
    "value": {"type": "string", "description": "UTF-8 text (raw bytes in msgpack)"},
    "value_b64": {"type": "string", "description": "base64, when the value is not valid UTF-8"},
}
_ENTRY_RESULT = _obj(
    ok={"type": "boolean"},
    key={"type": "string"},
    version={"type": "integer"},
    expires_at_ms={"type": "integer"},
    error={"$ref": "#/components/schemas/ErrorBody"},
    **_VALUE_PROPS,
)

_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/kv/{key}"): {
        "summary": "Read a key",
        "parameters": [_KEY_PARAM],
        "responses": {
            "200": {
                "description": "The raw value",
                "headers": {
                    "X-Kv-Version": {"schema": {"type": "integer"}},
                    "X-Kv-Expires-At-Ms": {"schema": {"type": "integer"}, "description": "Only with a TTL"},
                },
                "content": {"application/octet-stream": {}},
            },
            "404": _ERROR,
            "default": _ERROR,
        },
    },
    ("PUT", "/kv/{key}"): {
        "summary": "Write a key; the body is the raw value (any Content-Type)",
        "parameters": [
            _KEY_PARAM,
            {"name": "ttl_ms", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "ttl", "in": "query", "description": "Seconds, may be fractional", "schema": {"type": "number"}},
        ],
        "requestBody": {"required": True, "content": {"*/*": {}}},
        "responses": {"200": _ok("Written", _WRITTEN), "413": _ERROR, "default": _ERROR},
    },
    ("DELETE", "/kv/{key}"): {
        "summary": "Delete a key",
        "parameters": [_KEY_PARAM],
        "responses": {"200": _ok("Whether the key existed", _DELETED), "default": _ERROR},
    },
    ("POST", "/cas/{key}"): {
        "summary": "Compare and set: write `new` only if the current value is `expected` (null: absent)",
        "parameters": [_KEY_PARAM],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["expected", "new"],
                        "properties": {
                            "expected": {"type": ["string", "null"]},
                            "new": {"type": ["string", "null"], "description": "null deletes the key"},
                            "ttl_ms": {"type": "integer", "minimum": 1},
                            "encoding": {"enum": ["utf-8", "base64"]},
                        },
                    }
                },
                "application/msgpack": {},
            },
        },
        "responses": {
            "200": _ok("Written or deleted", {"oneOf": [_WRITTEN, _DELETED]}),
            "409": _ERROR,
            "default": _ERROR,
        },
    },
    ("GET", "/scan"): {
        "summary": "Keys in a range or with a prefix, in key order",
        "parameters": [
            {"name": "prefix", "in": "query", "schema": {"type": "string"}},
            {"name": "start", "in": "query", "schema": {"type": "string"}},
            {"name": "end", "in": "query", "description": "Exclusive", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        ],
        "responses": {
            "200": _ok(
                "A page of items",
                _obj(
                    items={
                        "type": "array",
                        "items": _obj(key={"type": "string"}, version={"type": "integer"}, **_VALUE_PROPS),
                    },
                    truncated={"type": "boolean"},
                ),
            ),
            "default": _ERROR,
        },
    },
    ("POST", "/batch"): {
        "summary": 'Many gets ({"get": [keys]}) or many puts ({"put": [{"key", "value"|"value_b64", "ttl_ms"?}]})',
        "requestBody": {"required": True, "content": _JSON_OR_MSGPACK_ANY},
        "responses": {
            "200": _ok("One result per entry, in order", _obj(results={"type": "array", "items": _ENTRY_RESULT})),
            "default": _ERROR,
        },
    },
    ("GET", "/cluster"): {
        "summary": "This node's view of the cluster: members, their health, the partition map",
        "responses": {"200": _ok("Cluster view", {"type": "object"})},
    },
    ("GET", "/health"): {
        "summary": "Liveness and storage progress of this node",
        "responses": {"200": _ok("Healthy", {"type": "object"})},
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics of this node",
        "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
    },
}

_COMPONENTS = {
    "schemas": {
        "ErrorBody": _obj(
            code={"type": "string"}, message={"type": "string"}, definite={"type": "boolean"}
        ),
    },
    "responses": {
        "Error": {
            "description": "An error; `definite` tells whether the operation certainly did not happen",
            "content": {
                "application/json": {"schema": _obj(error={"$ref": "#/components/schemas/ErrorBody"})}
            },
        }
    },
}


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.template, r.method)):
        if route.internal:
            continue
        operation = _OPERATIONS.get((route.method, route.template))
        if operation is None:
            raise ValueError(f"route {route.label} has no OpenAPI description")
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "kvstore", "version": "1", "description": "A replicated key-value store."},
        "paths": paths,
        "components": _COMPONENTS,
    }
