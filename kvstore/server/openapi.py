"""The OpenAPI 3.1 description of the client routes, built from the router's route table.

Each client route must have an operation here: ``build_openapi`` refuses a route it cannot describe,
so a route cannot be added without documenting it.

The description is exact, because tests hold the server to it (schemathesis, and a probe of every
documented parameter): the parameters and body fields listed are the ones a route accepts and nothing
else is (request objects are ``additionalProperties: false``); every status a route can answer is
listed, each with the error codes it can carry; and where a response has alternative shapes
(``oneOf``), each shape has required fields the others forbid, so a response matches exactly one.
The replication settings a request may name are the ones the node's mode serves (``build_openapi(...,
mode=, replicas=)``): every value in leader mode, only the defaults in single mode. In leaderless mode a GET
takes ``r``, ``repair`` and ``consistency=linearizable`` and may answer ``300`` with the siblings; a PUT or
DELETE takes ``w``, ``consistency`` and the ``X-Kv-Context`` header and answers the new context (``Stored``);
TTLs, replication settings and sessions are not parameters there, and CAS is documented as refused (400).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvstore.changes import MAX_CURSOR_CHARS
from kvstore.config import CONSISTENCY_LEVELS, FSYNC_POLICIES, MODES, STORAGE_ENGINES, Limits
from kvstore.errors import ErrorCode
from kvstore.features.definitions import ENTITY_TYPES, FEATURE_TYPES, MAX_ENTITY_CHARS
from kvstore.features.ingest import MAX_PUSH_EVENTS
from kvstore.features.serving import EXPIRED, MISSING, PRESENT
from kvstore.leaderless_mode import CONTEXT_HEADER
from kvstore.server.http_codec import JSON_TYPE, MSGPACK_TYPE, OCTET_TYPE
from kvstore.server.router import Route
from kvstore.server.routes_admin import (
    ADMIN_COPIES_TEMPLATE,
    DEFAULT_COPY_LIMIT,
    MAX_COPY_LIMIT,
    MAX_COPY_PAGE_BYTES,
)
from kvstore.server.routes_changes import DEFAULT_PAGE_LIMIT, DEFAULT_WAIT_MS, MAX_WAIT_MS, NDJSON_TYPE
from kvstore.server.routes_features import MAX_ONLINE_ENTITIES
from kvstore.server.routes_kv import DEFAULT_SCAN_LIMIT, SIBLINGS_HEADER
from kvstore.session import MAX_POSITION, MAX_SESSION_BYTES, SESSION_HEADER
from kvstore.validation import (
    MAX_CHANGES_PAGE,
    MAX_STALENESS_MS,
    MAX_TTL_MS,
    SINGLE_MODE_READS,
    SINGLE_MODE_WRITES,
)
from partitioning.partition_map import MEMBER_STATES
from replication.leaderless import REPAIR_MODES
from replication.replica import REPLICATION_SETTINGS

# The server reads msgpack bodies under either name; it answers with MSGPACK_TYPE.
_MSGPACK_ALIAS = "application/x-msgpack"
# What base64.b64decode(validate=True) accepts: whole 4-character groups, padding only at the end.
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# Every route: the HTTP edge refuses malformed, slow or oversized request heads and connections past
# its limit (http_server.py), a route refuses a bad request, and anything can fail unexpectedly.
_ALWAYS = (
    ErrorCode.BAD_REQUEST,
    ErrorCode.REQUEST_TIMEOUT,
    ErrorCode.URI_TOO_LONG,
    ErrorCode.HEADERS_TOO_LARGE,
    ErrorCode.OVERLOADED,
    ErrorCode.INTERNAL,
)
# Routes that hand an op to the node: it may be full, not reach or not hear from the key's owner, or be
# told by the partition's protocol that another node serves it (not_leader) or the map moved (wrong_epoch).
_NODE = (ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.NOT_LEADER, ErrorCode.WRONG_EPOCH)
# Routes that read a body: too large, or under a Content-Type or Content-Encoding they do not read.
_BODY = (ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
_CODINGS = "The body may be compressed, with `Content-Encoding: gzip` or `deflate`."
# Admin routes take the cluster secret as a bearer token (routes_admin.authorize).
_SECURITY_SCHEME = "clusterSecret"


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with exactly these fields: the ``required`` ones always, the ``optional`` ones maybe."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


def _one_of(*branches: dict[str, Any]) -> dict[str, Any]:
    return branches[0] if len(branches) == 1 else {"oneOf": list(branches)}


_STRING = {"type": "string"}
_VERSION = {
    "type": "integer",
    "minimum": 1,
    "description": "The version the replication protocol gave this value (in single mode, the partition's write index)",
}
_EXPIRES_AT_MS = {"type": "integer", "description": "When the key expires, in the owner's wall-clock ms"}
_TEXT_VALUE = {"type": "string", "description": "The value, when it is valid UTF-8"}
_BASE64 = {"type": "string", "contentEncoding": "base64", "pattern": _BASE64_PATTERN}
_B64_VALUE = {**_BASE64, "description": "The value in base64, when it is not valid UTF-8"}
_BIN_VALUE = {"description": "The value as raw bytes (msgpack bin)"}
_WRITTEN = _object({"key": _STRING, "version": _VERSION})
_DELETED = _object({"key": _STRING, "deleted": {"type": "boolean", "description": "Whether the key existed"}})


def _valued(fields: dict[str, Any], as_msgpack: bool, optional: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The shapes of ``fields`` plus a value: raw bytes in msgpack; in JSON ``value`` (text) or ``value_b64``."""
    if as_msgpack:
        return [_object({**fields, "value": _BIN_VALUE}, optional)]
    return [_object({**fields, "value": _TEXT_VALUE}, optional), _object({**fields, "value_b64": _B64_VALUE}, optional)]


def _key(limits: Limits) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        # In characters; the limit is in UTF-8 bytes, so a shorter non-ASCII key can still be refused.
        "maxLength": limits.max_key_bytes,
        "description": f"Non-empty UTF-8, at most {limits.max_key_bytes} bytes",
    }


_TTL_MS = {"type": "integer", "minimum": 1, "maximum": MAX_TTL_MS, "description": "Time to live in ms"}
# In a body, a null TTL is no TTL, as an absent one.
_BODY_TTL_MS = {"ttl_ms": {"oneOf": [_TTL_MS, {"type": "null"}]}}


_SESSION_TOKEN = {
    "type": "string",
    "maxLength": MAX_SESSION_BYTES,
    "pattern": r"^(?:[0-9]{1,10}:[0-9]{1,19}(?:,[0-9]{1,10}:[0-9]{1,19})*)?$",
    "description": (
        "The session's highest log position per partition (`partition:index`, comma-separated, the partition used "
        "last first; an index at most 2^63-1). Opaque to clients: send back the last one received."
    ),
}
_SESSION_PARAMETER = {
    "name": SESSION_HEADER,
    "in": "header",
    "required": False,
    "description": "A session token: a read is served from a state at least as new as its position for the key",
    "schema": _SESSION_TOKEN,
}
_SESSION_ANSWER = {
    SESSION_HEADER: {
        "schema": _SESSION_TOKEN,
        "description": "The request's token advanced by this answer's position (absent while it knows none)",
    }
}


def _replication(mode: str) -> dict[str, Any]:
    values = REPLICATION_SETTINGS if mode == "leader" else SINGLE_MODE_WRITES
    return {
        "enum": list(values),
        "description": "When the write is acknowledged (leader mode; default: the cluster's replication.writes)",
    }


def _quorum(replicas: int, what: str) -> dict[str, Any]:
    """A leaderless quorum (``kvstore.config.resolve_quorum``): one, quorum, all, or 1..replicas in at most three
    ASCII digits (leading zeros allowed)."""
    numbers = "|".join(f"0{{0,{3 - len(str(n))}}}{n}" for n in range(1, replicas + 1))
    return {
        "type": "string",
        "pattern": f"^(?:one|quorum|all|{numbers})$",
        "description": f"How many of the {replicas} replicas {what} (default: the cluster's [leaderless] setting)",
        "examples": ["quorum", str(replicas)],
    }


def _leaderless_read_query(replicas: int) -> dict[str, Any]:
    return _object(
        {},
        {
            "r": _quorum(replicas, "the read waits for"),
            "repair": {
                "enum": list(REPAIR_MODES),
                "description": "Whether the answer waits for stale replicas to be repaired (sync) or not (async)",
            },
            "consistency": {"const": "linearizable", "description": "An ABD read: a read phase, then a write-back"},
        },
    )


def _leaderless_write_query(replicas: int) -> dict[str, Any]:
    return _object(
        {},
        {
            "w": _quorum(replicas, "acknowledge the write"),
            "consistency": {"const": "linearizable", "description": "An ABD write over strict quorums"},
        },
    )


def _read_query(mode: str) -> dict[str, Any]:
    """``consistency``, and in leader mode ``max_staleness_ms`` with ``consistency=stale`` only."""
    description = "How the read is served (default: the cluster's replication.reads)"
    if mode != "leader":
        return _object({}, {"consistency": {"enum": list(SINGLE_MODE_READS), "description": description}})
    staleness = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_STALENESS_MS,
        "description": "The most the serving replica's state may lag behind the leader's",
    }
    fresh = [level for level in CONSISTENCY_LEVELS if level != "stale"]
    return _one_of(
        _object({}, {"consistency": {"enum": fresh, "description": description}}),
        _object({"consistency": {"const": "stale", "description": "Any replica, from its own state"}},
                {"max_staleness_ms": staleness}),
    )


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """All of a route's query parameters as one object, each property one parameter (form style,
    exploded): so the schema can say which combinations are allowed and that no other is."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": description,
        "schema": schema,
    }


def _error_body(codes: list[ErrorCode]) -> dict[str, Any]:
    definites = {code.definite for code in codes}
    return _object(
        {
            "code": {"enum": [code.value for code in codes]},
            "message": _STRING,
            "definite": {"const": definites.pop()} if len(definites) == 1 else {"type": "boolean"},
        }
    )


def _errors(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    """One response per HTTP status among ``codes``, each naming exactly the codes it can carry."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(code.http_status, []).append(code)
    return {
        str(status): {
            "description": ", ".join(code.value for code in group),
            "content": {JSON_TYPE: {"schema": _object({"error": _error_body(group)})}},
        }
        for status, group in sorted(by_status.items())
    }


def _ok(
    description: str, schema: dict[str, Any], msgpack_schema: dict[str, Any] | None = None, session: bool = False
) -> dict[str, Any]:
    """JSON, or msgpack when the request says ``Accept: application/msgpack``; ``session``: with the session header."""
    ok: dict[str, Any] = {
        "description": description,
        "content": {JSON_TYPE: {"schema": schema}, MSGPACK_TYPE: {"schema": msgpack_schema or schema}},
    }
    if session:
        ok["headers"] = _SESSION_ANSWER
    return ok


def _value_body(limits: Limits) -> dict[str, Any]:
    return {
        "required": False,
        "description": f"Any bytes, at most {limits.max_value_bytes}; no body writes the empty value. {_CODINGS}",
        # No schema: any bytes under any media type are a value.
        "content": {"*/*": {}},
    }


def _structured_body(schema: dict[str, Any]) -> dict[str, Any]:
    content = {"schema": schema}
    return {
        "required": True,
        "description": _CODINGS,
        "content": {JSON_TYPE: content, MSGPACK_TYPE: content, _MSGPACK_ALIAS: content},
    }


def _cas_body(mode: str) -> dict[str, Any]:
    def branch(encoding: dict[str, Any], value: dict[str, Any], required: bool) -> dict[str, Any]:
        # expected null: the key must be absent; new null: delete it.
        fields = {"expected": {"oneOf": [{"type": "null"}, value]}, "new": {"oneOf": [value, {"type": "null"}]}}
        optional: dict[str, Any] = {**_BODY_TTL_MS, "replication": _replication(mode)}
        if required:
            return _object({**fields, "encoding": encoding}, optional)
        return _object(fields, {**optional, "encoding": encoding})

    return {
        "description": (
            "`expected: null` means the key must not exist; `new: null` deletes it. In msgpack the values "
            "may also be raw bytes (bin), taken as they are whatever the encoding."
        ),
        # Told apart by "encoding": the base64 branch requires it, the UTF-8 branch allows only "utf-8".
        **_one_of(
            branch({"const": "utf-8"}, {"type": "string"}, required=False),
            branch({"const": "base64"}, _BASE64, required=True),
        ),
    }


def _batch_body(limits: Limits, mode: str) -> dict[str, Any]:
    def entries(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": item, "minItems": 1, "maxItems": limits.max_batch_keys}

    # Leaderless mode takes no TTL and no replication setting (its puts are blind writes at the default w).
    leaderless = mode == "leaderless"
    key, ttl = _key(limits), ({} if leaderless else _BODY_TTL_MS)
    put_entry = _one_of(
        _object({"key": key, "value": {"type": "string", "description": "UTF-8 text (or bin in msgpack)"}}, ttl),
        _object({"key": key, "value_b64": _BASE64}, ttl),
    )
    puts = _object({"put": entries(put_entry)}, {} if leaderless else {"replication": _replication(mode)})
    return _one_of(_object({"get": entries(key)}), puts)


def _batch_results(as_msgpack: bool, mode: str) -> dict[str, Any]:
    if mode == "leaderless":
        return _leaderless_batch_results(as_msgpack)
    ok, failed = {"const": True}, {"const": False}
    # Entries are checked before the batch runs, so an entry fails only as a whole single-key op can.
    error = _error_body([ErrorCode.NOT_FOUND, ErrorCode.INTERNAL, *_NODE])
    found = _valued({"ok": ok, "key": _STRING, "version": _VERSION}, as_msgpack, {"expires_at_ms": _EXPIRES_AT_MS})
    # A found entry has a value, a written one must not, a failed one has ok false: each matches one branch.
    entry = _one_of(
        *found,
        _object({"ok": ok, "key": _STRING, "version": _VERSION}),
        _object({"ok": failed, "key": _STRING, "error": error}),
    )
    return _object({"results": {"type": "array", "items": entry, "description": "One per entry, in order"}})


def _leaderless_batch_results(as_msgpack: bool) -> dict[str, Any]:
    ok, failed, context = {"const": True}, {"const": False}, {**_BASE64, "description": "The key's causal context"}
    # A key's policy may refuse a write (too many siblings, a malformed CRDT op): precondition_failed.
    error = _error_body([ErrorCode.NOT_FOUND, ErrorCode.INTERNAL, ErrorCode.PRECONDITION_FAILED, *_NODE])
    # A read has siblings (one or more), a write has acks, a missing key has an error and a context, a failure an
    # error alone: each entry matches one branch.
    entry = _one_of(
        _object({"ok": ok, "key": _STRING, "siblings": _siblings(as_msgpack, 1), "context": context}),
        _object({"ok": ok, "key": _STRING, "context": context, "acks": _ACKS}),
        _object({"ok": failed, "key": _STRING, "error": error, "context": context}),
        _object({"ok": failed, "key": _STRING, "error": error}),
    )
    return _object({"results": {"type": "array", "items": entry, "description": "One per entry, in order"}})


_ACKS = {"type": "integer", "minimum": 1, "description": "Replicas that acknowledged the write"}


def _siblings(as_msgpack: bool, min_items: int) -> dict[str, Any]:
    return {
        "type": "array",
        "items": _one_of(*_valued({}, as_msgpack)),
        "minItems": min_items,
        "description": "The concurrent values, in no particular order",
    }


def _siblings_body(as_msgpack: bool) -> dict[str, Any]:
    return _object(
        {
            "key": _STRING,
            "siblings": _siblings(as_msgpack, 2),
            "context": {**_BASE64, "description": "Send it back in X-Kv-Context to supersede every sibling"},
        }
    )


def _stored(extra: dict[str, Any]) -> dict[str, Any]:
    context = {**_BASE64, "description": "The key's causal context after the write (also in X-Kv-Context)"}
    return _object({"key": _STRING, **extra, "context": context, "acks": _ACKS})


_CONTEXT_SCHEMA = {**_BASE64, "minLength": 1, "description": "An opaque causal context, base64"}
_CONTEXT_ANSWER = {CONTEXT_HEADER: {"schema": _CONTEXT_SCHEMA, "description": "The key's causal context"}}
_SIBLINGS_ANSWER = {
    SIBLINGS_HEADER: {
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "description": "How many values the key has (0: absent or deleted)",
    }
}
_CONTEXT_PARAMETER = {
    "name": CONTEXT_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "The context of the read this write follows: the write supersedes exactly the values that read saw. "
        "Without it a PUT adds a sibling. Given at most once; it must be one this cluster gave out."
    ),
    "schema": _CONTEXT_SCHEMA,
}


def _scan_page(as_msgpack: bool, mode: str) -> dict[str, Any]:
    # A leaderless replica keeps no single version per key: scan items carry 0 there.
    version = {"const": 0, "description": "Leaderless mode: no version"} if mode == "leaderless" else _VERSION
    item = _one_of(*_valued({"key": _STRING, "version": version}, as_msgpack))
    return _object(
        {
            "items": {"type": "array", "items": item},
            "truncated": {"type": "boolean", "description": "More keys in the range follow the last one"},
            "next": {
                "type": ["string", "null"],
                "description": "The start of the next page (with the same end), or null when the scan is done",
            },
        }
    )


def _scan_query(limits: Limits) -> dict[str, Any]:
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": limits.max_scan_limit,
        "default": DEFAULT_SCAN_LIMIT,
        "description": "At most this many items",
    }
    prefix = {**_STRING, "description": "Keys that start with this", "examples": ["user/"]}
    start = {**_STRING, "description": "Keys from this one (inclusive)", "examples": ["a"]}
    end = {**_STRING, "description": "Keys before this one (exclusive)", "examples": ["m"]}
    # A prefix excludes start and end: the prefix branch requires it, the range branch forbids it.
    by_prefix = _object({"prefix": prefix}, {"limit": limit})
    return _one_of(by_prefix, _object({}, {"start": start, "end": end, "limit": limit}))


def _leaderless_view() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    partition = _object(
        {
            "partition": {"type": "integer", "minimum": 0},
            "preference": {"type": "array", "items": _STRING, "description": "The replicas a key's quorum asks"},
            "hints": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 1},
                "description": "Per target node, the hints this node holds for it in this partition",
            },
        }
    )
    return _object(
        {
            "partitions": {"type": "array", "items": partition, "description": "Every partition, in order"},
            "hints": _object(
                {
                    "held": {**count, "description": "Hints held now"},
                    "bytes": {**count, "description": "Bytes of keys and states held as hints now"},
                    "delivered": {**count, "description": "Hints handed to their target since start"},
                    "refused_full": {**count, "description": "Hinted writes refused because the store was full"},
                }
            ),
            "read_repairs": {**count, "description": "States sent to (or stored at) replicas reads found stale"},
            "anti_entropy": _object(
                {
                    "rounds": {**count, "description": "Merkle rounds finished here"},
                    "keys_repaired": {**count, "description": "Keys a round changed here"},
                    "bytes_sent": count,
                    "bytes_received": count,
                }
            ),
        }
    )


def _cluster_view() -> dict[str, Any]:
    member = {
        "node_id": _STRING,
        "address": {**_STRING, "description": "host:port; empty if this node does not know it"},
        "url": {"type": ["string", "null"], "description": "null if the address is not known"},
        "state": {"enum": list(MEMBER_STATES), "description": "removed: listed only while it still holds data"},
        "partitions": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "description": "The partitions it owns (is preferred owner of)",
        },
    }
    roster_entry = _object(
        {
            "node": _STRING,
            "address": {**_STRING, "description": "host:port; empty if not known"},
            "state": {"enum": list(MEMBER_STATES)},
            "version": {"type": "integer", "minimum": 1, "description": "Bumped by every change of this entry"},
        }
    )
    return _object(
        {
            "node_id": _STRING,
            "cluster": _STRING,
            "mode": {"enum": list(MODES)},
            "fsync": {"enum": list(FSYNC_POLICIES)},
            "engine": {"enum": list(STORAGE_ENGINES)},
            "epoch": {"type": "integer", "minimum": 1},
            "partitions": {"type": "integer", "minimum": 1},
            "partitioner": {"enum": ["hash", "range"]},
            "balanced": {
                "type": "boolean",
                "description": "The layout is where this node's rebalancer wants it and it sends no move now",
            },
            "moves_in_progress": {"type": "integer", "minimum": 0, "description": "Moves this node is sending"},
            "replicas": {
                "type": "integer",
                "minimum": 1,
                "description": "Copies of each partition in the founders' layout (1 in single mode)",
            },
            "members": {
                "type": "array",
                # A peer this node last failed to reach is "down" and says why; no other member has an error.
                "items": _one_of(
                    _object({**member, "health": {"enum": ["self", "unknown", "up"]}}),
                    _object({**member, "health": {"const": "down"}, "last_error": _STRING}),
                ),
            },
            "partition_stats": {
                "type": "array",
                "description": "What the answering node stores, per partition (each node reports its own)",
                "items": _object(
                    {
                        "partition": {"type": "integer", "minimum": 0},
                        "records": {"type": "integer", "minimum": 0, "description": "Tombstones included"},
                        "bytes": {"type": "integer", "minimum": 0, "description": "Keys and values"},
                    }
                ),
            },
            "partition_map": _object(
                {
                    "version": {"const": 2},
                    "epoch": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The map's version: the membership epoch plus every partition's changes",
                    },
                    "membership_epoch": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "1 plus every change of every roster entry",
                    },
                    "members": {"type": "array", "items": _STRING, "description": "Active and leaving nodes"},
                    "roster": {
                        "type": "array",
                        "items": roster_entry,
                        "description": "Every node the cluster has known, removed ones too, by id",
                    },
                    "replicas": {
                        "type": "array",
                        "items": {"type": "array", "items": _STRING},
                        "description": "Per partition, the nodes holding it, preferred owner first",
                    },
                    "epochs": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1},
                        "description": "Per partition, how many times its replicas (or its range) were set",
                    },
                },
                {
                    "starts": {
                        "type": "array",
                        "items": {"type": ["string", "null"]},
                        "description": "Range mode only: each slot's first key, null for a free slot",
                    },
                },
            ),
        },
        {
            "leaderless": {
                **_leaderless_view(),
                "description": (
                    "Leaderless mode only: per partition its preference list and the hints this node holds per "
                    "target, and this node's hinted handoff, read repair and anti-entropy counters since it started"
                ),
            },
            "leadership": {
                "type": "array",
                "description": (
                    "Leader mode only, per partition: the leader this node knows of and, for a partition this node "
                    "holds, its replica's Raft state"
                ),
                "items": _object(
                    {
                        "partition": {"type": "integer", "minimum": 0},
                        "leader": {"type": ["string", "null"], "description": "null: no leader known here"},
                    },
                    {
                        "role": {"enum": ["follower", "pre-candidate", "candidate", "leader"]},
                        "term": {"type": "integer", "minimum": 0},
                        "commit": {"type": "integer", "minimum": 0, "description": "Highest index known committed"},
                        "applied": {"type": "integer", "minimum": 0, "description": "Highest index applied here"},
                        "followers": {
                            "type": "array",
                            "description": "On the leader: each other replica's progress",
                            "items": _object(
                                {
                                    "node_id": _STRING,
                                    "match": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "Highest index known held durably there",
                                    },
                                    "lag": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "Entries of the leader's log it does not hold yet",
                                    },
                                }
                            ),
                        },
                    },
                ),
            },
            "ranges": {
                "type": "array",
                "description": "Range mode only: the key ranges in key order, each [start, end) (end null: no bound)",
                "items": _object(
                    {
                        "partition": {"type": "integer", "minimum": 0},
                        "start": _STRING,
                        "end": {"type": ["string", "null"]},
                        "owner": _STRING,
                    }
                ),
            },
        },
    )


def _copy_page(as_msgpack: bool) -> dict[str, Any]:
    """A page of one replica's copy: bytes are raw in msgpack and base64 in JSON."""
    data = {"description": "Raw bytes (msgpack bin)"} if as_msgpack else _BASE64
    # msgpack bin has no JSON type to tell it from nil by, so there it is one schema, not a oneOf.
    maybe_data = (
        {"description": "Raw bytes (msgpack bin), or nil for a tombstone"}
        if as_msgpack
        else {"oneOf": [_BASE64, {"type": "null"}], "description": "null: a tombstone"}
    )
    version = {"type": "integer", "description": "The version the protocol stored"}
    sibling = _object({"value": maybe_data, "version": version, "context": data})
    fields = {
        "key": _STRING,
        "version": version,
        "expires_at_ms": {
            "type": ["integer", "null"],
            "description": "A value is hidden from then on, a tombstone may be purged; null: never",
        },
        "context": {**data, "description": "The protocol's causal context, opaque"},
        "siblings": {"type": "array", "items": sibling, "description": "Concurrent values kept beside this one"},
    }
    # A tombstone has a null value, a value record has bytes: "tombstone" tells them apart.
    record = _one_of(
        _object({**fields, "value": data, "tombstone": {"const": False}}),
        _object({**fields, "value": {"type": "null"}, "tombstone": {"const": True}}),
    )
    return _object(
        {
            "node_id": _STRING,
            "partition": {"type": "integer", "minimum": 0},
            "epoch": {"type": "integer", "minimum": 1, "description": "The partition map's epoch"},
            "replicas": {"type": "array", "items": _STRING, "description": "The nodes holding this partition"},
            "clock_ms": {"type": "integer", "minimum": 0, "description": "The node's clock when it read the page"},
            "records": {"type": "array", "items": record, "description": "In key order"},
            "next": {
                "oneOf": [_STRING, {"type": "null"}],
                "description": "The `after` of the next page; null on the last page",
            },
        }
    )


def _copy_query(limits: Limits) -> dict[str, Any]:
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_COPY_LIMIT,
        "default": DEFAULT_COPY_LIMIT,
        "description": f"At most this many records (and at most {MAX_COPY_PAGE_BYTES} bytes of keys, values and "
        "contexts, but at least one record)",
    }
    after = {**_key(limits), "description": "Records with keys after this one (the `next` of the previous page)"}
    return _object({}, {"after": after, "limit": limit})


def _leaderless_key_operations(
    limits: Limits, replicas: int, key_param: dict[str, Any], key_errors: tuple[ErrorCode, ...]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The key routes of a leaderless node: quorum reads that may answer siblings, writes with a causal context."""
    # A key's policy may refuse a write (too many siblings, a malformed CRDT op) or an ABD read's write-back.
    errors = (*key_errors, ErrorCode.PRECONDITION_FAILED)
    get_errors = _errors((*errors, ErrorCode.NOT_FOUND))
    get_errors["404"]["headers"] = {**_SIBLINGS_ANSWER, **_CONTEXT_ANSWER}
    with_context = {CONTEXT_HEADER: {**_CONTEXT_ANSWER[CONTEXT_HEADER], "required": True}}
    write_parameters = [
        key_param,
        _query("quorum", _leaderless_write_query(replicas), "How many replicas acknowledge, and how"),
        _CONTEXT_PARAMETER,
    ]
    return {
        ("GET", "/kv/{key}"): {
            "summary": "Read a key from a quorum of its replicas",
            "parameters": [key_param, _query("read", _leaderless_read_query(replicas), "How the read is served")],
            "responses": {
                "200": {
                    "description": "The key's one value, raw (a CRDT key's: its state as JSON)",
                    "headers": {**with_context, **_SIBLINGS_ANSWER},
                    "content": {OCTET_TYPE: {"schema": {"type": "string", "contentMediaType": OCTET_TYPE}}},
                },
                "300": {
                    **_ok("Concurrent writes left several values (siblings)", _siblings_body(False),
                          _siblings_body(True)),
                    "headers": {**with_context, **_SIBLINGS_ANSWER},
                },
                **get_errors,
            },
        },
        ("PUT", "/kv/{key}"): {
            "summary": "Write a key; the body is the raw value, under any Content-Type",
            "description": "TTLs are not supported in leaderless mode (ttl, ttl_ms: 400).",
            "parameters": write_parameters,
            "requestBody": _value_body(limits),
            "responses": {
                "200": {**_ok("Stored", _stored({})), "headers": with_context},
                **_errors((*errors, *_BODY)),
            },
        },
        ("DELETE", "/kv/{key}"): {
            "summary": "Delete a key: a tombstone that supersedes what the context saw",
            "parameters": write_parameters,
            "responses": {
                "200": {**_ok("Stored (a tombstone)", _stored({"deleted": {"const": True}})), "headers": with_context},
                **_errors(errors),
            },
        },
        ("POST", "/cas/{key}"): {
            "summary": "Compare and set: refused in leaderless mode (400)",
            "description": "Write with the causal context of a read (X-Kv-Context) to replace exactly what it read.",
            "parameters": [key_param],
            "requestBody": _structured_body(_cas_body("single")),
            "responses": _errors((*_ALWAYS, *_BODY)),
        },
    }


def _operations(limits: Limits, mode: str, replicas: int) -> dict[tuple[str, str], dict[str, Any]]:
    key_param = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": "Percent-encoded UTF-8; may contain '/'",
        "schema": _key(limits),
    }
    key_errors = (*_ALWAYS, ErrorCode.BAD_KEY, *_NODE)
    no_query = "Takes no query parameters"
    key_operations = _leaderless_key_operations(limits, replicas, key_param, key_errors) if mode == "leaderless" else {}
    operations: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/kv/{key}"): {
            "summary": "Read a key",
            "parameters": [
                key_param,
                _query("read", _read_query(mode), "How the read is served"),
                _SESSION_PARAMETER,
            ],
            "responses": {
                "200": {
                    "description": "The raw value",
                    "headers": {
                        "X-Kv-Version": {"required": True, "schema": _VERSION},
                        "X-Kv-Expires-At-Ms": {"schema": _EXPIRES_AT_MS, "description": "Only with a TTL"},
                        **_SESSION_ANSWER,
                    },
                    "content": {OCTET_TYPE: {"schema": {"type": "string", "contentMediaType": OCTET_TYPE}}},
                },
                **_errors((*key_errors, ErrorCode.NOT_FOUND)),
            },
        },
        ("PUT", "/kv/{key}"): {
            "summary": "Write a key; the body is the raw value, under any Content-Type",
            "description": "Give at most one of `ttl_ms` and `ttl`.",
            "parameters": [
                key_param,
                _query(
                    "ttl",
                    {
                        "type": "object",
                        "properties": {
                            "ttl_ms": {**_TTL_MS, "examples": [60000]},
                            "ttl": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": MAX_TTL_MS // 1000,
                                "description": "Time to live in seconds, rounded up to a whole millisecond",
                                "examples": [1.5],
                            },
                            "replication": _replication(mode),
                        },
                        "additionalProperties": False,
                        "not": {"required": ["ttl", "ttl_ms"]},
                    },
                    "A time to live, in whole milliseconds (`ttl_ms`) or in seconds (`ttl`), at most one; and when "
                    "the write is acknowledged",
                ),
                _SESSION_PARAMETER,
            ],
            "requestBody": _value_body(limits),
            "responses": {"200": _ok("Written", _WRITTEN, session=True), **_errors((*key_errors, *_BODY))},
        },
        ("DELETE", "/kv/{key}"): {
            "summary": "Delete a key",
            "parameters": [
                key_param,
                _query(
                    "replication",
                    _object({}, {"replication": _replication(mode)}),
                    "When the delete is acknowledged",
                ),
                _SESSION_PARAMETER,
            ],
            "responses": {
                "200": _ok("`deleted` says whether the key existed", _DELETED, session=True),
                **_errors(key_errors),
            },
        },
        ("POST", "/cas/{key}"): {
            "summary": "Compare and set: write `new` only if the current value is `expected` (null: absent)",
            "description": no_query,
            "parameters": [key_param, _SESSION_PARAMETER],
            "requestBody": _structured_body(_cas_body(mode)),
            "responses": {
                "200": _ok(
                    "Written (`new` was a value) or deleted (`new` was null)", _one_of(_WRITTEN, _DELETED), session=True
                ),
                **_errors((*key_errors, *_BODY, ErrorCode.PRECONDITION_FAILED)),
            },
        },
        ("GET", "/scan"): {
            "summary": "Keys in a range or with a prefix, in key order",
            "description": "`end` must not sort before `start`.",
            "parameters": [
                _query("range", _scan_query(limits), "A prefix, or a range from `start` to `end`; and a limit"),
            ],
            "responses": {
                "200": _ok("A page of items", _scan_page(False, mode), _scan_page(True, mode)),
                **_errors((*_ALWAYS, *_NODE)),
            },
        },
        ("POST", "/batch"): {
            "summary": 'Many gets ({"get": [keys]}) or puts ({"put": [{"key", "value" | "value_b64", "ttl_ms"?}]})',
            "description": f"{no_query}. Each entry succeeds or fails on its own.",
            "requestBody": _structured_body(_batch_body(limits, mode)),
            "responses": {
                "200": _ok(
                    "One result per entry, in order", _batch_results(False, mode), _batch_results(True, mode)
                ),
                **_errors((*_ALWAYS, ErrorCode.BAD_KEY, *_BODY, *_NODE)),
            },
        },
        ("GET", "/cluster"): {
            "summary": "This node's view of the cluster: members, their health, the partition map",
            "description": no_query,
            "responses": {"200": _ok("Cluster view", _cluster_view()), **_errors(_ALWAYS)},
        },
        ("GET", "/health"): {
            "summary": "Liveness and storage progress of this node",
            "description": no_query,
            "responses": {
                "200": {
                    "description": "Healthy",
                    "content": {
                        JSON_TYPE: {
                            "schema": _object(
                                {
                                    "status": {"const": "ok"},
                                    "node_id": _STRING,
                                    "inflight": {"type": "integer", "minimum": 0},
                                    "written_lsn": {"type": "integer", "minimum": 0},
                                    "synced_lsn": {"type": "integer", "minimum": 0},
                                }
                            )
                        }
                    },
                },
                **_errors(_ALWAYS),
            },
        },
        ("GET", "/metrics"): {
            "summary": "Prometheus metrics of this node",
            "description": no_query,
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": _STRING}}},
                **_errors(_ALWAYS),
            },
        },
        ("GET", ADMIN_COPIES_TEMPLATE): {
            "summary": "This node's copy of one partition it holds a replica of, every stored record in key order",
            "description": (
                "An admin route: `Authorization: Bearer <cluster secret>`. Tombstones and expired records are "
                "included, with the version, expiry, causal context and siblings the protocol stored. Follow "
                "`next` as `after` until it is null to read the whole copy."
            ),
            "security": [{_SECURITY_SCHEME: []}],
            "parameters": [
                {
                    "name": "partition",
                    "in": "path",
                    "required": True,
                    "description": "0 to the partition count minus 1 (see /cluster)",
                    "schema": {"type": "integer", "minimum": 0},
                },
                _query("page", _copy_query(limits), "Where the page starts and how many records it holds at most"),
            ],
            "responses": {
                "200": _ok("A page of the copy", _copy_page(False), _copy_page(True)),
                **_errors((*_ALWAYS, ErrorCode.BAD_KEY, ErrorCode.UNAUTHORIZED, ErrorCode.NOT_FOUND)),
            },
        },
        ("GET", "/openapi.json"): {
            "summary": "This document",
            "description": no_query,
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {
                        JSON_TYPE: {
                            "schema": {
                                "type": "object",
                                "required": ["openapi", "info", "paths"],
                                "properties": {"openapi": {"const": "3.1.0"}},
                            }
                        }
                    },
                },
                **_errors(_ALWAYS),
            },
        },
    }
    # A leaderless node serves its key routes differently (siblings, contexts, quorums).
    return {**operations, **key_operations, **_changes_operations(limits), **_feature_operations(mode, replicas)}


# ---------------------------------------------------------------- the change feed (routes_changes.py)

_MAX_PARTITION = (1 << 31) - 1
_POSITION = {"type": "integer", "minimum": 0, "description": "A position in a partition's feed (a record version)"}
_CURSOR = {
    "type": "string",
    "maxLength": MAX_CURSOR_CHARS,
    "pattern": "^[A-Za-z0-9_-]*$",
    "description": "Where a reader of every partition is: opaque, send back the last one processed",
}


def _change_frame(as_msgpack: bool) -> dict[str, Any]:
    """One frame of a /changes stream: a page, caught up, a partition's error, or the end; each shape has a
    required field the others forbid."""
    fields = {
        "key": _STRING,
        "version": _POSITION,
        "expires_at_ms": {"oneOf": [_EXPIRES_AT_MS, {"type": "null"}]},
    }
    if as_msgpack:
        # A tombstone's value is nil: one shape, as raw bytes carry no JSON type to tell the two apart by.
        change = _object({**fields, "value": {"description": "The value as raw bytes (bin); nil: a tombstone"}})
    else:
        change = _one_of(*_valued(fields, False), _object({**fields, "value": {"type": "null"}}))
    page = _object(
        {
            "partition": {"type": "integer", "minimum": 0},
            "changes": {"type": "array", "items": change, "minItems": 1, "description": "In position order"},
            "position": {**_POSITION, "description": "Where the partition's next page starts"},
            "source": {**_STRING, "description": "Who numbered the positions (leaderless: a node id; else empty)"},
            "more": {"type": "boolean", "description": "More changes followed when the page was read"},
            "cursor": _CURSOR,
        }
    )
    caught_up = _object(
        {
            "caught_up": {"const": True},
            "round_ms": {"type": "number", "minimum": 0, "description": "How long the round of reads took"},
            "as_of_ms": {"type": "integer", "description": "When the round began, by the node's wall clock (ms)"},
            "cursor": _CURSOR,
        }
    )
    failed = _object(
        {
            "partition": {"type": "integer", "minimum": 0},
            "error": _object({"code": _STRING, "message": _STRING}),
        }
    )
    end = _object({"end": {"const": True}, "cursor": _CURSOR})
    return {
        "description": "One frame; the body is a sequence of them (each a line in NDJSON, a map in msgpack)",
        **_one_of(page, caught_up, failed, end),
    }


def _changes_query(limits: Limits) -> dict[str, Any]:
    common = {
        "prefix": {
            **_STRING,
            "maxLength": limits.max_key_bytes,
            "description": f"Only keys that start with this (at most {limits.max_key_bytes} UTF-8 bytes)",
            "examples": ["user/"],
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_CHANGES_PAGE,
            "default": DEFAULT_PAGE_LIMIT,
            "description": "At most this many changes per page",
        },
        "wait_ms": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_WAIT_MS,
            "default": DEFAULT_WAIT_MS,
            "description": "How long the stream stays open once caught up, waiting for changes (0: end at once)",
        },
    }
    one = _object(
        {
            "partition": {
                "type": "integer",
                "minimum": 0,
                # The count is the cluster's (see /cluster); past it: 400, as past this bound.
                "maximum": _MAX_PARTITION,
                "description": "0 to the partition count minus 1",
            }
        },
        {"after": {**_POSITION, "maximum": MAX_POSITION, "description": "Changes after this position (default 0)"},
         **common},
    )
    every = _object({}, {"cursor": {**_CURSOR, "description": "Resume every partition (none: from the start)"},
                         **common})
    return _one_of(one, every)


def _changes_operations(limits: Limits) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("GET", "/changes"): {
            "summary": "The change feed: a partition's changes after a position, or every partition's after a cursor",
            "description": (
                "Streamed (chunked). Compacted: a key written several times since a position shows once, at its "
                "newest version. Resume from the last cursor processed: at-least-once. A partition that cannot "
                "be read is reported in an error frame and retried. `after` goes with `partition`; `cursor` "
                "without it."
            ),
            "parameters": [_query("feed", _changes_query(limits), "Which changes, how many per page, how long")],
            "responses": {
                "200": {
                    "description": "A stream of frames, NDJSON or (Accept: application/msgpack) msgpack maps",
                    "content": {
                        NDJSON_TYPE: {"schema": _change_frame(False)},
                        MSGPACK_TYPE: {"schema": _change_frame(True)},
                    },
                },
                **_errors(_ALWAYS),
            },
        }
    }


# ---------------------------------------------------------------- the feature store (routes_features.py)

_FEATURE_NAME = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,62}$"}
_VIEW_NAME = {**_FEATURE_NAME, "description": "A feature view's name"}
_EVENT_TS_MS = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1, "description": "Event time, ms since epoch"}
_ENTITY_ID = {
    "oneOf": [
        {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1},
        {"type": "string", "minLength": 1, "maxLength": MAX_ENTITY_CHARS, "pattern": "^[^/]*$"},
    ],
    "description": "The entity's id: an int64, or a string without '/' (as the entity's value_type says)",
}


def _definitions_schema(request: bool) -> dict[str, Any]:
    """The definitions (``Definitions.to_json``); as a request, ``ttl_s`` may stand for ``ttl_ms``."""
    description = {"type": "string", "maxLength": 4096}
    entity = _object({"join_key": _FEATURE_NAME}, {"value_type": {"enum": list(ENTITY_TYPES)},
                                                   "description": description})
    source = _object({"path": {**_STRING, "minLength": 1}}, {"timestamp_column": {**_STRING, "minLength": 1}})
    features = {
        "type": "object",
        "minProperties": 1,
        "propertyNames": _FEATURE_NAME,
        "additionalProperties": {"enum": list(FEATURE_TYPES)},
    }
    ttl_ms = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1, "description": "0: values never expire"}
    optional: dict[str, Any] = {"ttl_ms": ttl_ms, "source": source, "description": description}
    if request:
        optional["ttl_s"] = {"type": "number", "minimum": 0, "maximum": 1e15, "description": "The TTL in seconds"}
        view = _object({"entity": _FEATURE_NAME, "features": features}, optional)
        view["not"] = {"required": ["ttl_ms", "ttl_s"]}
        entity_tables = {"entities": {"type": "object", "propertyNames": _FEATURE_NAME, "additionalProperties": entity}}
        return _object({}, {**entity_tables, "views": {"type": "object", "propertyNames": _FEATURE_NAME,
                                                        "additionalProperties": view}})
    answer_entity = _object({"join_key": _FEATURE_NAME, "value_type": {"enum": list(ENTITY_TYPES)},
                             "description": description})
    view = _object({"entity": _FEATURE_NAME, "features": features, "ttl_ms": ttl_ms, "description": description},
                   {"source": source})
    return _object(
        {
            "entities": {"type": "object", "additionalProperties": answer_entity},
            "views": {"type": "object", "additionalProperties": view},
        }
    )


_REGISTRY = _object(
    {
        "version": {"type": "integer", "minimum": 0, "description": "0: nothing applied yet"},
        "definitions": _definitions_schema(False),
        "applied_at_ms": {"type": "integer", "minimum": 0},
    }
)
_WATERMARK = _object(
    {"view": _STRING, "watermark_ms": {"oneOf": [_EVENT_TS_MS, {"type": "null"}], "description": "null: none yet"}}
)


def _with_fields(errors: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``errors`` whose bodies may also carry the fields ``extra``."""
    for response in errors.values():
        schema = response["content"][JSON_TYPE]["schema"]
        schema["properties"] = {**schema["properties"], **extra}
    return errors


def _online_answer() -> dict[str, Any]:
    value = {"description": "The value (null unless present); bytes are {\"b64\": ...} in JSON, bin in msgpack"}
    columns = {"type": "object", "additionalProperties": {"type": "array", "items": value}}
    return _object(
        {
            "view": _STRING,
            "entities": {"type": "array", "items": {"type": ["integer", "string"]}},
            "features": {"type": "array", "items": _STRING},
            "values": {**columns, "description": "Per feature, one value per entity, in order"},
            "status": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"enum": [PRESENT, MISSING, EXPIRED]}},
            },
            "event_ts_ms": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"oneOf": [_EVENT_TS_MS, {"type": "null"}]}},
            },
            "registry_version": {"type": "integer", "minimum": 0},
            "source": {"const": "cluster"},
            "staleness_ms": {"type": "number", "minimum": 0},
        }
    )


def _online_body(mode: str, replicas: int) -> dict[str, Any]:
    settings: dict[str, Any]
    if mode == "leaderless":
        settings = {
            "r": _quorum(replicas, "each read waits for"),
            "consistency": {"const": "linearizable", "description": "ABD reads"},
        }
    else:
        levels = list(SINGLE_MODE_READS) if mode == "single" else list(CONSISTENCY_LEVELS)
        settings = {"consistency": {"enum": levels, "description": "How each row is read"}}
    return _object(
        {
            "view": _VIEW_NAME,
            "entities": {"type": "array", "items": _ENTITY_ID, "maxItems": MAX_ONLINE_ENTITIES},
        },
        {
            "features": {"type": "array", "items": _FEATURE_NAME, "description": "A subset (default: all)"},
            **settings,
        },
    )


def _push_query(mode: str, replicas: int) -> dict[str, Any]:
    if mode == "leaderless":
        return _object({}, {"w": _quorum(replicas, "acknowledge each write")})
    return _object({}, {"replication": _replication(mode)})


def _feature_operations(mode: str, replicas: int) -> dict[tuple[str, str], dict[str, Any]]:
    view_param = {"name": "view", "in": "path", "required": True, "description": "A view's name", "schema": _STRING}
    node_errors = (*_ALWAYS, *_NODE, ErrorCode.BAD_KEY)
    push_errors = _with_fields(
        _errors((*node_errors, *_BODY, ErrorCode.NOT_FOUND, ErrorCode.PRECONDITION_FAILED)),
        {
            "unacknowledged": {"type": "integer", "minimum": 1, "description": "Writes not acknowledged"},
            "writes": {"type": "integer", "minimum": 1, "description": "Writes the push made"},
        },
    )
    event = _object(
        {"entity": _ENTITY_ID, "event_ts_ms": _EVENT_TS_MS, "values": {"type": "object", "description": "Every "
                                                                       "feature of the view: value or null"}}
    )
    push = _object(
        {"view": _VIEW_NAME, "events": {"type": "array", "items": event, "minItems": 1, "maxItems": MAX_PUSH_EVENTS}}
    )
    return {
        ("GET", "/features/registry"): {
            "summary": "The feature definitions applied to the cluster (the current version, or an older one)",
            "parameters": [
                _query(
                    "registry",
                    _object({}, {"version": {"type": "integer", "minimum": 1, "maximum": 10**12 - 1}}),
                    "A version to read back (default: the current one)",
                )
            ],
            "responses": {
                "200": _ok("The registry", _REGISTRY),
                **_errors((*node_errors, ErrorCode.NOT_FOUND)),
            },
        },
        ("PUT", "/features/registry"): {
            "summary": "Apply definitions: the next version, unless they equal the current ones",
            "description": "Takes no query parameters",
            "requestBody": _structured_body(_definitions_schema(True)),
            "responses": {
                "200": _ok(
                    "The version now current, and whether this apply made it",
                    _object({"version": {"type": "integer", "minimum": 1}, "changed": {"type": "boolean"}}),
                ),
                **_errors((*node_errors, *_BODY, ErrorCode.PRECONDITION_FAILED)),
            },
        },
        ("POST", "/features/push"): {
            "summary": "Push events of a view: each merged into the event log and its entity's online row",
            "description": (
                "Idempotent: a push that was not acknowledged may be sent again. Per feature the newest event time "
                "wins, whatever the order of arrival."
            ),
            "parameters": [_query("write", _push_query(mode, replicas), "When each write is acknowledged")],
            "requestBody": _structured_body(push),
            "responses": {
                "200": _ok(
                    "Every write acknowledged",
                    _object({"events": {"type": "integer", "minimum": 1}, "writes": {"type": "integer", "minimum": 2}}),
                ),
                **push_errors,
            },
        },
        ("POST", "/features/online"): {
            "summary": "The latest feature values of entities, TTL enforced at the node's clock (columnar)",
            "description": "Takes no query parameters",
            "requestBody": _structured_body(_online_body(mode, replicas)),
            "responses": {
                "200": _ok("Per feature, one value and status per entity", _online_answer()),
                **_errors((*node_errors, *_BODY, ErrorCode.NOT_FOUND, ErrorCode.PRECONDITION_FAILED)),
            },
        },
        ("GET", "/features/watermarks/{view}"): {
            "summary": "A view's materialization watermark",
            "description": "Takes no query parameters",
            "parameters": [view_param],
            "responses": {"200": _ok("The watermark", _WATERMARK), **_errors((*node_errors, ErrorCode.NOT_FOUND))},
        },
        ("PUT", "/features/watermarks/{view}"): {
            "summary": "Move a view's watermark forward (an older one changes nothing)",
            "description": "Takes no query parameters",
            "parameters": [view_param],
            "requestBody": _structured_body(_object({"watermark_ms": _EVENT_TS_MS})),
            "responses": {
                "200": _ok("The watermark now (never older than before)", _WATERMARK),
                **_errors((*node_errors, *_BODY, ErrorCode.NOT_FOUND)),
            },
        },
    }


_INFO_DESCRIPTION = (
    "A replicated key-value store. Structured answers are JSON, or msgpack with "
    '`Accept: application/msgpack`; errors are always JSON, `{"error": {"code", "message", "definite"}}`, '
    "where `definite: true` means the operation certainly did not happen. A method a path does not list is "
    "answered 405 `method_not_allowed` with an `Allow` header."
)


def build_openapi(
    routes: list[Route], limits: Limits | None = None, mode: str = "single", replicas: int = 1
) -> dict[str, Any]:
    """The description of ``routes`` (internal ones left out), with the bounds of ``limits`` and the settings of
    the ``mode`` (``replicas``: copies per partition, which bound a leaderless quorum)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    operations = _operations(limits or Limits(), mode, replicas)
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.template, r.method)):
        if route.internal:
            continue
        operation = operations.get((route.method, route.template))
        if operation is None:
            raise ValueError(f"route {route.label} has no OpenAPI description")
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "kvstore", "version": "1", "description": _INFO_DESCRIPTION},
        "paths": paths,
    }
    if any("security" in operation for ops in paths.values() for operation in ops.values()):
        doc["components"] = {
            "securitySchemes": {
                _SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": "The cluster secret"}
            }
        }
    return doc
