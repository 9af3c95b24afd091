"""Client data routes: ``/kv/{key}``, ``/cas/{key}``, ``/scan`` and ``/batch``.

Each handler turns the request into a ``ClientOp``, submits it to the pump (answered inline when the
node can answer at once) and turns the ``Result`` into a response; a ``Failure`` is raised as a
``KvError`` and the router renders it. Limits the node enforces anyway are checked here only where
that avoids reading a body that would be refused (value and body sizes).

TTLs: ``PUT /kv/{key}?ttl_ms=N`` (whole milliseconds) or ``?ttl=S`` (seconds, may be fractional,
rounded up to a whole millisecond); CAS and batch puts take ``"ttl_ms"`` in the body. Numbers in a
query are ASCII decimals ("1.5", "1e-3"; not "1_000", " 1", "inf" or other scripts' digits) and query
values must percent-decode to UTF-8: anything else is a definite ``bad_request``, never a guess.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore.config import Limits
from kvstore.errors import ErrorCode, KvError
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
    GetOp,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    Written,
)
from kvstore.server.http_codec import (
    OCTET_TYPE,
    check_fields,
    encoded_response,
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
from kvstore.validation import check_ttl_ms, parse_whole_number, prefix_range, ttl_ms_from_seconds

DEFAULT_SCAN_LIMIT = 1000
_ENCODINGS = ("utf-8", "base64")


class KvRoutes:
    def __init__(self, pump: Pump, limits: Limits) -> None:
        self._pump = pump
        self._limits = limits
        self._structured_limit_bytes = structured_body_limit_bytes(limits.max_value_bytes)

    def register(self, router: Router) -> None:
        router.add("GET", "/kv/{key}", self.get)
        router.add("PUT", "/kv/{key}", self.put, max_body_bytes=wire_limit_bytes(self._limits.max_value_bytes))
        router.add("DELETE", "/kv/{key}", self.delete)
        structured_bytes = wire_limit_bytes(self._structured_limit_bytes)
        router.add("POST", "/cas/{key}", self.cas, max_body_bytes=structured_bytes)
        router.add("GET", "/scan", self.scan)
        router.add("POST", "/batch", self.batch, max_body_bytes=structured_bytes)

    async def _run(self, op: ClientOp) -> Result:
        result = self._pump.submit(op)
        if isinstance(result, asyncio.Future):
            result = await result
        return result

    # ------------------------------------------------------------ /kv/{key}

    async def get(self, request: Request, key: str) -> Response:
        refuse_query(request)
        result = await self._run(GetOp(key))
        if isinstance(result, Found):
            headers = {"Content-Type": OCTET_TYPE, "X-Kv-Version": str(result.version)}
            if result.expires_at_ms is not None:
                headers["X-Kv-Expires-At-Ms"] = str(result.expires_at_ms)
            return Response(body=result.value, headers=headers)
        raise _unexpected(result)

    async def put(self, request: Request, key: str) -> Response:
        ttl_ms = _ttl_ms(query_params(request, ("ttl", "ttl_ms"))) if request.query_string else None
        value = read_body(request, self._limits.max_value_bytes)
        result = await self._run(PutOp(key, value, ttl_ms))
        if isinstance(result, Written):
            return encoded_response({"key": result.key, "version": result.version}, wants_msgpack(request))
        raise _unexpected(result)

    async def delete(self, request: Request, key: str) -> Response:
        refuse_query(request)
        result = await self._run(DeleteOp(key))
        if isinstance(result, Deleted):
            return encoded_response({"key": result.key, "deleted": result.existed}, wants_msgpack(request))
        raise _unexpected(result)

    # ------------------------------------------------------------ /cas/{key}

    async def cas(self, request: Request, key: str) -> Response:
        refuse_query(request)
        doc, _ = read_document(request, self._structured_limit_bytes)
        check_fields(doc, ("expected", "new"), ("ttl_ms", "encoding"), "cas")
        encoding = doc.get("encoding", "utf-8")
        if encoding not in _ENCODINGS:
            raise KvError(ErrorCode.BAD_REQUEST, f"encoding must be one of {', '.join(_ENCODINGS)}")
        expected = None if doc["expected"] is None else value_from(doc["expected"], encoding, "expected")
        new = None if doc["new"] is None else value_from(doc["new"], encoding, "new")
        result = await self._run(CasOp(key, expected, new, optional_int(doc, "ttl_ms")))
        as_msgpack = wants_msgpack(request)
        if isinstance(result, Written):
            return encoded_response({"key": result.key, "version": result.version}, as_msgpack)
        if isinstance(result, Deleted):
            return encoded_response({"key": result.key, "deleted": result.existed}, as_msgpack)
        raise _unexpected(result)

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
        if len(doc) != 1 or not ({"get", "put"} & doc.keys()):
            raise KvError(ErrorCode.BAD_REQUEST, 'batch body must be {"get": [keys]} or {"put": [entries]}')
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
            op = BatchPutOp(tuple(_put_entry(entry, i) for i, entry in enumerate(entries)))
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


def _ttl_ms(params: dict[str, str]) -> int | None:
    if "ttl" in params and "ttl_ms" in params:
        raise KvError(ErrorCode.BAD_REQUEST, "give either ttl (seconds) or ttl_ms, not both")
    if "ttl_ms" in params:
        return check_ttl_ms(parse_whole_number(params["ttl_ms"], "ttl_ms"))
    if "ttl" in params:
        return ttl_ms_from_seconds(params["ttl"])
    return None


def _put_entry(entry: Any, index: int) -> PutOp:
    where = f"put[{index}]"
    if not isinstance(entry, dict):
        raise KvError(ErrorCode.BAD_REQUEST, f"{where} must be an object")
    has_b64 = "value_b64" in entry
    check_fields(entry, ("key", "value_b64" if has_b64 else "value"), ("ttl_ms",), where)
    if has_b64:
        value = value_from(entry["value_b64"], "base64", f"{where}.value_b64")
    else:
        value = value_from(entry["value"], "utf-8", f"{where}.value")
    return PutOp(entry["key"], value, optional_int(entry, "ttl_ms"))


def _batch_entry(key: str, result: Result, as_msgpack: bool) -> dict[str, object]:
    if isinstance(result, Found):
        entry: dict[str, object] = {"ok": True, "key": key, **value_fields(result.value, as_msgpack)}
        entry["version"] = result.version
        if result.expires_at_ms is not None:
            entry["expires_at_ms"] = result.expires_at_ms
        return entry
    if isinstance(result, Written):
        return {"ok": True, "key": key, "version": result.version}
    error = _unexpected(result)
    return {"ok": False, "key": key, **error.to_json()}
