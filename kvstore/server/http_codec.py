"""Request bodies, content negotiation, value encoding and the error shape of the HTTP API.

Structured bodies are JSON by default and msgpack with ``Content-Type: application/msgpack``;
structured responses are msgpack when the client sends ``Accept: application/msgpack``. In JSON a
value is ``"value"`` (UTF-8 text) when it is valid UTF-8, else ``"value_b64"``; msgpack carries raw
bytes under ``"value"``. Errors are always JSON: ``{"error": {"code", "message", "definite"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgpack
from aiohttp import web

from kvstore.errors import ErrorCode, KvError
from kvstore.messages import Failure

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
OCTET_TYPE = "application/octet-stream"
_MSGPACK_TYPES = frozenset({MSGPACK_TYPE, "application/x-msgpack"})
_JSON_HEADERS = {"Content-Type": JSON_TYPE}
_MSGPACK_HEADERS = {"Content-Type": MSGPACK_TYPE}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Structured bodies (CAS, batch) hold up to two values at the limit, base64-encoded, plus this much.
_STRUCTURED_OVERHEAD_BYTES = 1 << 20


def structured_body_limit_bytes(max_value_bytes: int) -> int:
    """The largest CAS or batch body accepted: room for two base64 values at the value limit."""
    return 2 * (4 * -(-max_value_bytes // 3)) + _STRUCTURED_OVERHEAD_BYTES


async def read_body(request: web.BaseRequest, limit_bytes: int) -> bytes:
    """The whole body, refused with ``too_large`` before reading when it is declared too long."""
    length = request.content_length
    if length is not None and length > limit_bytes:
        raise KvError(ErrorCode.TOO_LARGE, f"body is {length} bytes; the limit is {limit_bytes}")
    if request.headers.get("Expect", "").lower() == "100-continue":
        # The low-level server does not answer Expect itself; curl waits a second for it on big uploads.
        await request.writer.write(_CONTINUE)
    if length is not None:
        # Common case: a declared length within the limit; aiohttp stops the stream at that length.
        return await request.content.read()
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit_bytes:
            raise KvError(ErrorCode.TOO_LARGE, f"body is over the limit of {limit_bytes} bytes")
    return bytes(body)


def is_msgpack_body(request: web.BaseRequest) -> bool:
    """True for msgpack, False for JSON (or no Content-Type); ``unsupported_media_type`` otherwise."""
    header = request.headers.get("Content-Type")
    if header is None:
        return False
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type == JSON_TYPE:
        return False
    if media_type in _MSGPACK_TYPES:
        return True
    raise KvError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"expected {JSON_TYPE} or {MSGPACK_TYPE}, got {media_type!r}")


def wants_msgpack(request: web.BaseRequest) -> bool:
    accept = request.headers.get("Accept")
    return accept is not None and any(t in accept for t in _MSGPACK_TYPES)


async def read_document(request: web.BaseRequest, limit_bytes: int) -> tuple[dict[str, Any], bool]:
    """A JSON or msgpack object body, and whether it was msgpack."""
    as_msgpack = is_msgpack_body(request)
    body = await read_body(request, limit_bytes)
    try:
        doc = msgpack.unpackb(body, raw=False) if as_msgpack else json.loads(body)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        kind = "msgpack" if as_msgpack else "JSON"
        raise KvError(ErrorCode.BAD_REQUEST, f"body is not valid {kind}: {exc}") from exc
    if not isinstance(doc, dict):
        raise KvError(ErrorCode.BAD_REQUEST, "body must be an object")
    return doc, as_msgpack


def check_fields(doc: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    missing = [f for f in required if f not in doc]
    if missing:
        raise KvError(ErrorCode.BAD_REQUEST, f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(str(f) for f in doc if f not in required and f not in optional)
    if unknown:
        raise KvError(ErrorCode.BAD_REQUEST, f"{where}: unknown field(s) {', '.join(unknown)}")


def encoded_response(doc: object, as_msgpack: bool, status: int = 200) -> web.Response:
    if as_msgpack:
        return web.Response(body=msgpack.packb(doc, use_bin_type=True), status=status, headers=_MSGPACK_HEADERS)
    return json_response(doc, status)


def json_response(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), status=status, headers=_JSON_HEADERS)


def error_response(error: KvError) -> web.Response:
    return json_response(error.to_json(), error.code.http_status)


def failure_error(failure: Failure) -> KvError:
    try:
        code = failure.error_code
    except ValueError:
        code = ErrorCode.INTERNAL
    return KvError(code, failure.message)


# ---------------------------------------------------------------- values in structured bodies


def value_fields(value: bytes, as_msgpack: bool) -> dict[str, object]:
    """``{"value": ...}`` (text or raw bytes) or ``{"value_b64": ...}`` for bytes that are not UTF-8."""
    if as_msgpack:
        return {"value": value}
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_b64": base64.b64encode(value).decode("ascii")}


def value_from(raw: object, encoding: str, field: str) -> bytes:
    """A value sent as raw bytes (msgpack), UTF-8 text, or base64 text, per ``encoding``."""
    if isinstance(raw, bytes):
        return raw
    if not isinstance(raw, str):
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} must be a string")
    if encoding == "base64":
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"{field} is not valid base64") from exc
    try:
        return raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} is not valid UTF-8 text") from exc


def optional_int(doc: dict[str, Any], field: str) -> int | None:
    value = doc.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} must be an integer")
    return value
