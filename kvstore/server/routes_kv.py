"""Client data routes: ``/kv/{key}``, ``/cas/{key}``, ``/scan`` and ``/batch``.

Each handler turns the request into a ``ClientOp``, submits it to the pump (answered inline when the
node can answer at once) and turns the ``Result`` into a response; a ``Failure`` is raised as a
``KvError`` and the router renders it. Limits the node enforces anyway are checked here only where
that avoids reading a body that would be refused (value and body sizes).

TTLs: ``PUT /kv/{key}?ttl_ms=N`` (whole milliseconds) or ``?ttl=S`` (seconds, may be fractional,
rounded up to a whole millisecond); CAS and batch puts take ``"ttl_ms"`` in the body. Numbers in a
query are ASCII decimals ("1.5", "1e-3"; not "1_000", " 1", "inf" or other scripts' digits) and query
values must percent-decode to UTF-8: anything else is a definite ``bad_request``, never a guess.

Replication settings (leader mode; single mode takes only the values it serves anyway), where the TTL goes:
``PUT/DELETE /kv/{key}?replication=sync|semi-sync|async``, ``"replication"`` in a CAS body and beside a batch's
``"put"``; ``GET /kv/{key}?consistency=linearizable|read-index|lease|unsafe|stale`` and, with ``stale``,
``&max_staleness_ms=N``. The node checks the values (``kvstore.validation.check_op``).

Leaderless mode: ``GET /kv/{key}?r=N|one|quorum|all&repair=sync|async`` (and ``consistency=linearizable``:
ABD) answers ``200`` with the value when the key has one, ``300 Multiple Choices`` with every sibling (JSON, or
msgpack when asked: ``{"key", "siblings": [{"value"|"value_b64"}...], "context"}``) when concurrent writes left
several, ``404`` when none; every answer carries the key's causal context in ``X-Kv-Context`` (base64) and the
number of values in ``X-Kv-Siblings``. ``PUT``/``DELETE /kv/{key}?w=...&consistency=linearizable`` take the
context of the read they follow in ``X-Kv-Context`` (without one a PUT adds a sibling) and answer the new
context, in the header and the body, with the number of replicas that acknowledged (``acks``).

Sessions (``kvstore/session.py``): a key op may carry ``X-Kv-Session``; a GET is then served from a state at
least as new as the token's position in the key's partition, and every answer to a key op carries the token
advanced by the answer's position.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from kvstore import session
from kvstore.config import RESERVED_PREFIX, Limits
from kvstore.effects import Reply
from kvstore.errors import ErrorCode, KvError
from kvstore.leaderless_mode import CONTEXT_HEADER
from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    FoundSiblings,
    GetOp,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    Stored,
    Written,
)
from kvstore.server.http_codec import (
    OCTET_TYPE,
    check_fields,
    encoded_response,
    error_response,
    failure_error,
    optional_int,
    query_params,
    read_body,
    read_document,
    refuse_query,
    structured_body_limit_bytes,
    value_fields,
    value_from,
    wants_msgpack,
    wire_limit_bytes,
)
from kvstore.server.http_message import Request, Response
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.validation import (
    check_ttl_ms,
    decode_base64,
    parse_whole_number,
    prefix_range,
    ttl_ms_from_seconds,
)

DEFAULT_SCAN_LIMIT = 1000
_ENCODINGS = ("utf-8", "base64")
SIBLINGS_HEADER = "X-Kv-Siblings"


class KvRoutes:
    def __init__(
        self,
        pump: Pump,
        limits: Limits,
        partition_of: Callable[[str], int],
        read_siblings: Callable[[int], None] = lambda _count: None,
    ) -> None:
        self._pump = pump
        self._limits = limits
        # The partition a key maps to (the node's map): where a session token keeps the key's position.
        self._partition_of = partition_of
        self._structured_limit_bytes = structured_body_limit_bytes(limits.max_value_bytes)
        # Leaderless mode: told how many values each read answered (the siblings-per-key metric).
        self._read_siblings = read_siblings

    def register(self, router: Router) -> None:
        router.add("GET", "/kv/{key}", self.get)
        router.add("PUT", "/kv/{key}", self.put, max_body_bytes=wire_limit_bytes(self._limits.max_value_bytes))
        router.add("DELETE", "/kv/{key}", self.delete)
        structured_bytes = wire_limit_bytes(self._structured_limit_bytes)
        router.add("POST", "/cas/{key}", self.cas, max_body_bytes=structured_bytes)
        router.add("GET", "/scan", self.scan)
        router.add("POST", "/batch", self.batch, max_body_bytes=structured_bytes)

    async def _run(self, op: ClientOp) -> Result:
        return (await self._reply(op)).result

    async def _reply(self, op: ClientOp) -> Reply:
        reply = self._pump.submit(op)
        if isinstance(reply, asyncio.Future):
            reply = await reply
        return reply

    # ------------------------------------------------------------ /kv/{key}

    async def get(self, request: Request, key: str) -> Response:
        allowed = ("consistency", "max_staleness_ms", "r", "repair")
        params = query_params(request, allowed) if request.query_string else {}
        staleness = params.get("max_staleness_ms")
        max_staleness_ms = None if staleness is None else parse_whole_number(staleness, "max_staleness_ms")
        positions = _session(request)
        min_index = positions.get(self._partition_of(key), 0) if positions else 0
        consistency, r, repair = (params.get(name, "") for name in ("consistency", "r", "repair"))
        op = GetOp(key, consistency, max_staleness_ms, min_index, r, repair)
        reply = await self._reply(op)
        result = reply.result
        if isinstance(result, Found):
            headers = {"Content-Type": OCTET_TYPE, "X-Kv-Version": str(result.version)}
            if result.expires_at_ms is not None:
                headers["X-Kv-Expires-At-Ms"] = str(result.expires_at_ms)
            return self._with_session(Response(body=result.value, headers=headers), positions, key, reply)
        if isinstance(result, FoundSiblings):
            self._read_siblings(len(result.values))
            return _siblings_response(result, wants_msgpack(request))
        return self._failed(result, positions, key, reply)

    async def put(self, request: Request, key: str) -> Response:
        allowed = ("ttl", "ttl_ms", "replication", "w", "consistency")
        params = query_params(request, allowed) if request.query_string else {}
        ttl_ms = _ttl_ms(params)
        value = read_body(request, self._limits.max_value_bytes)
        positions = _session(request)
        context = _context(request)
        replication, w, consistency = (params.get(name, "") for name in ("replication", "w", "consistency"))
        refuse_reserved(key)
        op = PutOp(key, value, ttl_ms, replication, w, context, consistency)
        reply = await self._reply(op)
        result = reply.result
        if isinstance(result, Written):
            response = encoded_response({"key": result.key, "version": result.version}, wants_msgpack(request))
            return self._with_session(response, positions, key, reply)
        if isinstance(result, Stored):
            return _stored_response(result, {}, wants_msgpack(request))
        raise _unexpected(result)

    async def delete(self, request: Request, key: str) -> Response:
        params = query_params(request, ("replication", "w", "consistency")) if request.query_string else {}
        positions = _session(request)
        context = _context(request)
        refuse_reserved(key)
        op = DeleteOp(key, params.get("replication", ""), params.get("w", ""), context, params.get("consistency", ""))
        reply = await self._reply(op)
        result = reply.result
        if isinstance(result, Deleted):
            response = encoded_response({"key": result.key, "deleted": result.existed}, wants_msgpack(request))
            return self._with_session(response, positions, key, reply)
        if isinstance(result, Stored):
            return _stored_response(result, {"deleted": True}, wants_msgpack(request))
        raise _unexpected(result)

    def _failed(self, result: Result, positions: session.Positions, key: str, reply: Reply) -> Response:
        """The error response for ``result``. An answer a replica served (a read that found nothing, a CAS whose
        precondition failed) has a position, and the session advances by it as by a success: a session that saw
        a delete must never read the deleted value again."""
        error = _unexpected(result)
        if reply.position <= 0:
            raise error
        return self._with_session(error_response(error), positions, key, reply)

    def _with_session(self, response: Response, positions: session.Positions, key: str, reply: Reply) -> Response:
        """``response`` carrying the request's session token advanced by the answer's position (no header while
        the session knows no position: single mode answers none)."""
        if positions or reply.position > 0:
            advanced = session.advance(positions, self._partition_of(key), reply.position)
            response.headers[session.SESSION_HEADER] = session.render(advanced)
        return response

    # ------------------------------------------------------------ /cas/{key}

    async def cas(self, request: Request, key: str) -> Response:
        refuse_query(request)
        positions = _session(request)
        doc, _ = read_document(request, self._structured_limit_bytes)
        check_fields(doc, ("expected", "new"), ("ttl_ms", "encoding", "replication"), "cas")
        replication = _replication_field(doc)
        encoding = doc.get("encoding", "utf-8")
        if encoding not in _ENCODINGS:
            raise KvError(ErrorCode.BAD_REQUEST, f"encoding must be one of {', '.join(_ENCODINGS)}")
        expected = None if doc["expected"] is None else value_from(doc["expected"], encoding, "expected")
        new = None if doc["new"] is None else value_from(doc["new"], encoding, "new")
        refuse_reserved(key)
        reply = await self._reply(CasOp(key, expected, new, optional_int(doc, "ttl_ms"), replication))
        result = reply.result
        as_msgpack = wants_msgpack(request)
        if isinstance(result, Written):
            response = encoded_response({"key": result.key, "version": result.version}, as_msgpack)
        elif isinstance(result, Deleted):
            response = encoded_response({"key": result.key, "deleted": result.existed}, as_msgpack)
        else:
            return self._failed(result, positions, key, reply)
        return self._with_session(response, positions, key, reply)

    # ------------------------------------------------------------ /scan

    async def scan(self, request: Request, _: str) -> Response:
        params = query_params(request, ("prefix", "start", "end", "limit"))
        limit = _int_param(params, "limit", DEFAULT_SCAN_LIMIT)
        if "prefix" in params:
            if "start" in params or "end" in params:
                raise KvError(ErrorCode.BAD_REQUEST, "give either prefix or start/end, not both")
            start, end = prefix_range(params["prefix"])
        else:
            start, end = params.get("start", ""), params.get("end")
        result = await self._run(ScanOp(start, end, limit))
        if not isinstance(result, ScanPage):
            raise _unexpected(result)
        as_msgpack = wants_msgpack(request)
        items = [{"key": i.key, **value_fields(i.value, as_msgpack), "version": i.version} for i in result.items]
        # Where the next page starts: just after the last key (the smallest key greater than it).
        resume = result.items[-1].key + "\x00" if result.truncated and result.items else None
        return encoded_response({"items": items, "truncated": result.truncated, "next": resume}, as_msgpack)

    # ------------------------------------------------------------ /batch

    async def batch(self, request: Request, _param: str) -> Response:
        refuse_query(request)
        doc, _as_msgpack = read_document(request, self._structured_limit_bytes)
        # The puts' replication setting travels beside them; a batch get has none.
        replication = _replication_field(doc) if "put" in doc else ""
        fields = doc.keys() - {"replication"} if "put" in doc else doc.keys()
        if len(fields) != 1 or not ({"get", "put"} & fields):
            message = 'batch body must be {"get": [keys]} or {"put": [entries]} (and "replication" with a put)'
            raise KvError(ErrorCode.BAD_REQUEST, message)
        entries = doc.get("get", doc.get("put"))
        if not isinstance(entries, list):
            raise KvError(ErrorCode.BAD_REQUEST, "batch entries must be a list")
        if len(entries) > self._limits.max_batch_keys:
            raise KvError(ErrorCode.TOO_LARGE, f"a batch holds at most {self._limits.max_batch_keys} entries")
        op: BatchGetOp | BatchPutOp
        if "get" in doc:
            op = BatchGetOp(tuple(entries))
            keys = op.keys
        else:
            op = BatchPutOp(tuple(_put_entry(entry, i, replication) for i, entry in enumerate(entries)))
            keys = tuple(item.key for item in op.items)
        result = await self._run(op)
        if not isinstance(result, BatchResults):
            raise _unexpected(result)
        as_msgpack = wants_msgpack(request)
        results = [_batch_entry(key, r, as_msgpack) for key, r in zip(keys, result.results, strict=True)]
        return encoded_response({"results": results}, as_msgpack)


# ---------------------------------------------------------------- helpers


def _unexpected(result: Result) -> KvError:
    if isinstance(result, Failure):
        return failure_error(result)
    return KvError(ErrorCode.INTERNAL, f"unexpected result {type(result).__name__}")


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    text = params.get(name)
    return default if text is None else parse_whole_number(text, name)


def refuse_reserved(key: object) -> None:
    """Keys under ``RESERVED_PREFIX`` are the feature store's: its routes write them, with values they checked."""
    # Any other type is refused by the node's checks, with the field named.
    if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
        raise KvError(
            ErrorCode.BAD_REQUEST,
            f"keys under {RESERVED_PREFIX} belong to the feature store: write them through /features routes",
        )


def _ttl_ms(params: dict[str, str]) -> int | None:
    if "ttl" in params and "ttl_ms" in params:
        raise KvError(ErrorCode.BAD_REQUEST, "give either ttl (seconds) or ttl_ms, not both")
    if "ttl_ms" in params:
        return check_ttl_ms(parse_whole_number(params["ttl_ms"], "ttl_ms"))
    if "ttl" in params:
        return ttl_ms_from_seconds(params["ttl"])
    return None


def _replication_field(doc: dict[str, Any]) -> str:
    """A structured write's ``"replication"`` field ("" when absent: the cluster's setting)."""
    replication = doc.get("replication", "")
    if not isinstance(replication, str):
        raise KvError(ErrorCode.BAD_REQUEST, "replication must be a string")
    return replication


def _context(request: Request) -> bytes:
    """A leaderless write's ``X-Kv-Context`` (b"" when it has none: a blind write); the node checks it decodes."""
    values = request.headers.getall(CONTEXT_HEADER, [])
    if len(values) > 1:
        raise KvError(ErrorCode.BAD_REQUEST, f"{CONTEXT_HEADER} is given twice")
    return decode_base64(values[0], CONTEXT_HEADER) if values else b""


def _context_text(context: bytes) -> str:
    return base64.b64encode(context).decode("ascii")


def _siblings_response(result: FoundSiblings, as_msgpack: bool) -> Response:
    """A leaderless read: the value (200), every sibling (300), or not found (404), with the key's context."""
    values = result.values
    if len(values) == 1:
        response = Response(body=values[0], headers={"Content-Type": OCTET_TYPE})
    elif values:
        siblings = [value_fields(v, as_msgpack) for v in values]
        doc = {"key": result.key, "siblings": siblings, "context": _context_text(result.context)}
        response = encoded_response(doc, as_msgpack, status=300)
    else:
        response = error_response(KvError(ErrorCode.NOT_FOUND, f"key {result.key!r} not found"))
    if result.context:
        response.headers[CONTEXT_HEADER] = _context_text(result.context)
    response.headers[SIBLINGS_HEADER] = str(len(values))
    return response


def _stored_response(result: Stored, extra: dict[str, object], as_msgpack: bool) -> Response:
    context = _context_text(result.context)
    response = encoded_response({"key": result.key, **extra, "context": context, "acks": result.acks}, as_msgpack)
    response.headers[CONTEXT_HEADER] = context
    return response


def _session(request: Request) -> session.Positions:
    """The request's ``X-Kv-Session`` token (empty when it has none); ``bad_request`` if it is not a token."""
    tokens = request.headers.getall(session.SESSION_HEADER, [])
    if len(tokens) > 1:
        raise KvError(ErrorCode.BAD_REQUEST, f"{session.SESSION_HEADER} is given twice")
    try:
        return session.parse(tokens[0]) if tokens else {}
    except session.SessionTokenError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from None


def _put_entry(entry: Any, index: int, replication: str) -> PutOp:
    where = f"put[{index}]"
    if not isinstance(entry, dict):
        raise KvError(ErrorCode.BAD_REQUEST, f"{where} must be an object")
    has_b64 = "value_b64" in entry
    check_fields(entry, ("key", "value_b64" if has_b64 else "value"), ("ttl_ms",), where)
    if has_b64:
        value = value_from(entry["value_b64"], "base64", f"{where}.value_b64")
    else:
        value = value_from(entry["value"], "utf-8", f"{where}.value")
    try:
        refuse_reserved(entry["key"])
    except KvError as exc:
        raise KvError(exc.code, f"put[{index}]: {exc.message}") from None
    return PutOp(entry["key"], value, optional_int(entry, "ttl_ms"), replication)


def _batch_entry(key: str, result: Result, as_msgpack: bool) -> dict[str, object]:
    if isinstance(result, Found):
        entry: dict[str, object] = {"ok": True, "key": key, **value_fields(result.value, as_msgpack)}
        entry["version"] = result.version
        if result.expires_at_ms is not None:
            entry["expires_at_ms"] = result.expires_at_ms
        return entry
    if isinstance(result, Written):
        return {"ok": True, "key": key, "version": result.version}
    if isinstance(result, FoundSiblings):
        if not result.values:
            error = KvError(ErrorCode.NOT_FOUND, f"key {key!r} not found")
            return {"ok": False, "key": key, **error.to_json(), "context": _context_text(result.context)}
        siblings = [value_fields(v, as_msgpack) for v in result.values]
        return {"ok": True, "key": key, "siblings": siblings, "context": _context_text(result.context)}
    if isinstance(result, Stored):
        return {"ok": True, "key": key, "context": _context_text(result.context), "acks": result.acks}
    error = _unexpected(result)
    return {"ok": False, "key": key, **error.to_json()}
