"""Request bodies, content negotiation, value encoding and the error shape of the HTTP API.

Structured bodies are JSON by default and msgpack with ``Content-Type: application/msgpack``;
structured responses are msgpack when the client sends ``Accept: application/msgpack``. In JSON a
value is ``"value"`` (UTF-8 text) when it is valid UTF-8, else ``"value_b64"``; msgpack carries raw
bytes under ``"value"``. Errors are always JSON: ``{"error": {"code", "message", "definite"}}``.

A body may arrive compressed (``Content-Encoding: gzip``, ``x-gzip`` or ``deflate``). The edge hands a
route the body as sent (at most ``wire_limit_bytes`` of the route's limit); ``read_body`` inflates it and
stops one byte past the limit, so a small compressed body cannot make the node hold hundreds of MiB, and
the peer route checks the signature before inflating anything. Any other coding is ``unsupported_media_type``.
Structured documents nest at most ``MAX_DOCUMENT_DEPTH_LEVELS`` deep, checked before JSON is parsed (the
parser recurses once per level).
"""

from __future__ import annotations

import base64
import codecs
import json
import zlib
from typing import Any
from urllib.parse import unquote_plus

import msgpack
from multidict import CIMultiDict

from kvstore.errors import MAX_SHOWN_CHARS, ErrorCode, KvError, shown
from kvstore.messages import Failure
from kvstore.server.http_message import Request, Response
from kvstore.validation import decode_base64

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
OCTET_TYPE = "application/octet-stream"
_MSGPACK_TYPES = frozenset({MSGPACK_TYPE, "application/x-msgpack"})
_JSON_HEADERS = {"Content-Type": JSON_TYPE}
_MSGPACK_HEADERS = {"Content-Type": MSGPACK_TYPE}

# Deepest structured document accepted; the documents of the API nest four levels at most.
MAX_DOCUMENT_DEPTH_LEVELS = 32
_TOO_DEEP_MESSAGE = f"body nests deeper than {MAX_DOCUMENT_DEPTH_LEVELS} levels"

# An error names at most this many unknown fields of a body.
_FIELDS_NAMED = 5

# Structured bodies (CAS, batch) hold up to two values at the limit, base64-encoded, plus this much.
_STRUCTURED_OVERHEAD_BYTES = 1 << 20


def structured_body_limit_bytes(max_value_bytes: int) -> int:
    """The largest CAS or batch body accepted: room for two base64 values at the value limit."""
    return 2 * (4 * -(-max_value_bytes // 3)) + _STRUCTURED_OVERHEAD_BYTES


# Content codings ``read_body`` inflates, as zlib window bits.
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def wire_limit_bytes(limit_bytes: int) -> int:
    """The most bytes read from the network for a body of at most ``limit_bytes`` once inflated: compressed
    content that does not compress grows a little (stored blocks, gzip header and trailer), and 1/1024 plus
    1 KiB covers it. A route registers this as its body limit."""
    return limit_bytes + limit_bytes // 1024 + 1024


def _content_coding(request: Request) -> str | None:
    """The body's content coding, None for identity; ``unsupported_media_type`` for one not inflated here."""
    if "Content-Encoding" not in request.headers:
        # The common case, kept to one lookup: PUT /kv is a hot path.
        return None
    header = ",".join(request.headers.getall("Content-Encoding", ()))
    codings = [c for c in (part.strip().lower() for part in header.split(",")) if c not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _ZLIB_WBITS:
        return codings[0]
    raise KvError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"Content-Encoding {shown(header)} is not supported; use gzip, deflate or identity",
    )


def read_wire_body(request: Request, limit_bytes: int) -> tuple[bytes, str | None]:
    """The body as sent and its content coding (None: not compressed), for a body of at most
    ``limit_bytes`` once inflated; ``too_large`` when it is longer as sent."""
    coding = _content_coding(request)
    wire = request.body
    limit = limit_bytes if coding is None else wire_limit_bytes(limit_bytes)
    if len(wire) > limit:
        what = "body" if coding is None else f"{coding} body"
        raise KvError(ErrorCode.TOO_LARGE, f"{what} is {len(wire)} bytes; the limit is {limit}")
    return wire, coding


def inflate(wire: bytes, coding: str | None, limit_bytes: int) -> bytes:
    """``wire`` decoded from ``coding``; ``too_large`` as soon as it inflates past ``limit_bytes``."""
    if coding is None or not wire:
        # An empty body compresses nothing, whatever its header says (aiohttp reads it the same way).
        return wire
    wbits = _ZLIB_WBITS[coding]
    if coding == "deflate" and wire[0] & 0x0F != 8:
        # Raw deflate without the zlib header (the low nibble of a zlib header is 8): some clients send it.
        wbits = -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        # One byte past the limit is enough to refuse the body; nothing beyond it is ever inflated.
        body = inflater.decompress(wire, limit_bytes + 1)
    except zlib.error as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"body is not valid {coding}: {exc}") from exc
    if len(body) > limit_bytes:
        raise KvError(ErrorCode.TOO_LARGE, f"body inflates to over the limit of {limit_bytes} bytes")
    if not inflater.eof:
        raise KvError(ErrorCode.BAD_REQUEST, f"{coding} body is truncated")
    if inflater.unused_data:
        raise KvError(ErrorCode.BAD_REQUEST, f"body has data after the end of its {coding} stream")
    return body


def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, inflated if compressed; ``too_large`` once it passes ``limit_bytes``."""
    body = request.body
    if len(body) <= limit_bytes and "Content-Encoding" not in request.headers:
        # PUT /kv's common case, kept to two checks.
        return body
    wire, coding = read_wire_body(request, limit_bytes)
    return inflate(wire, coding, limit_bytes)


def is_msgpack_body(headers: CIMultiDict[str]) -> bool:
    """True for msgpack, False for JSON (or no Content-Type); ``unsupported_media_type`` otherwise."""
    header = headers.get("Content-Type")
    if header is None:
        return False
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type == JSON_TYPE:
        return False
    if media_type in _MSGPACK_TYPES:
        return True
    raise KvError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"expected {JSON_TYPE} or {MSGPACK_TYPE}, got {shown(media_type)}")


def wants_msgpack(request: Request) -> bool:
    """True when Accept lists a msgpack type (any case) with a nonzero q no lower than application/json's."""
    accept = request.headers.get("Accept")
    if accept is None or "msgpack" not in accept.lower():
        return False
    msgpack_q = json_q = 0.0
    for media_range in accept.split(","):
        media_type, _, params = media_range.partition(";")
        media_type = media_type.strip().lower()
        if media_type in _MSGPACK_TYPES:
            msgpack_q = max(msgpack_q, _quality(params))
        elif media_type == JSON_TYPE:
            json_q = max(json_q, _quality(params))
    return msgpack_q > 0 and msgpack_q >= json_q


def _quality(params: str) -> float:
    """The q parameter of a media range (RFC 9110 12.4.2): 1 when absent, 0 when it is not a weight."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            # NaN fails both comparisons and so counts as 0, like any weight outside [0, 1].
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def read_document(request: Request, limit_bytes: int) -> tuple[dict[str, Any], bool]:
    """A JSON or msgpack object body, and whether it was msgpack."""
    as_msgpack = is_msgpack_body(request.headers)
    body = read_body(request, limit_bytes)
    try:
        if as_msgpack:
            doc = msgpack.unpackb(body, raw=False, object_pairs_hook=_unique_fields)
        else:
            _check_json_nesting(body)
            # JSON must be UTF-8 (RFC 8259), as the nesting check read it; given bytes, json.loads would
            # also take UTF-16 or UTF-32, whose bytes the check cannot read. A leading BOM is ignored.
            doc = json.loads(body.removeprefix(codecs.BOM_UTF8).decode(), object_pairs_hook=_unique_fields)
    except msgpack.StackError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, _TOO_DEEP_MESSAGE) from exc
    except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
        kind = "msgpack" if as_msgpack else "JSON"
        raise KvError(ErrorCode.BAD_REQUEST, f"body is not valid {kind}: {exc}") from exc
    if not isinstance(doc, dict):
        raise KvError(ErrorCode.BAD_REQUEST, "body must be an object")
    if as_msgpack and not _msgpack_nests_within(doc, MAX_DOCUMENT_DEPTH_LEVELS):
        raise KvError(ErrorCode.BAD_REQUEST, _TOO_DEEP_MESSAGE)
    return doc, as_msgpack


def _unique_fields(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """An object whose field names are distinct: with a name given twice, the parsers would silently keep
    the last value, which another reader of the same body (a proxy, an audit log) may not."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[Any] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"field {shown(str(name))} is given twice")
            seen.add(name)
    return doc


# Delete sets for bytes.translate: all but what the JSON nesting check reads. With escapes in the body
# it keeps backslashes and every byte JSON allows after one, so each escape stays a pair in the skeleton.
_NOT_QUOTES_OR_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_NOT_QUOTES_BRACKETS_OR_ESCAPES = bytes(b for b in range(256) if b not in b'"[]{}\\/bfnrtu')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_BRACKET_KIND = bytes.maketrans(b"{}", b"[]")


def _check_json_nesting(body: bytes) -> None:
    """Refuse (``bad_request``) a JSON body that nests deeper than ``MAX_DOCUMENT_DEPTH_LEVELS``, before
    json.loads could recurse that deep, or whose brackets do not balance. Only C string operations, a
    bounded number of linear passes, so the check itself cannot recurse."""
    levels = MAX_DOCUMENT_DEPTH_LEVELS
    if b"\\" in body:
        skeleton = body.translate(None, _NOT_QUOTES_BRACKETS_OR_ESCAPES)
        # An escaped quote does not end a string; JSON pairs backslashes from the left, as replace does.
        skeleton = skeleton.replace(b"\\\\", b"").replace(b'\\"', b"")
    else:
        skeleton = body.translate(None, _NOT_QUOTES_OR_BRACKETS)
    if skeleton.count(b"[") + skeleton.count(b"{") <= levels:
        return
    # Every other quote opens a string, and brackets inside strings are text.
    structure = b"".join(skeleton.split(b'"')[::2]).translate(_ONE_BRACKET_KIND, _NOT_BRACKETS)
    # Each pass removes the innermost pairs: one level, no more, as there is one bracket kind.
    for _ in range(levels):
        inner_removed = structure.replace(b"[]", b"")
        if len(inner_removed) == len(structure):
            break
        structure = inner_removed
    if b"[]" in structure:
        raise KvError(ErrorCode.BAD_REQUEST, _TOO_DEEP_MESSAGE)
    if structure:
        raise KvError(ErrorCode.BAD_REQUEST, "body is not valid JSON: its brackets do not balance")


def _msgpack_nests_within(doc: object, levels: int) -> bool:
    """True when ``doc`` nests at most ``levels`` deep; walked level by level, so it cannot recurse.
    (msgpack's own decoder is iterative and stops at 1024 levels with StackError.)"""
    containers: list[Any] = [doc]
    for _ in range(levels):
        containers = [
            child
            for parent in containers
            for child in (parent.values() if isinstance(parent, dict) else parent)
            if isinstance(child, (dict, list))
        ]
    return not containers


def query_params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each a name in ``allowed``, given once, percent-encoded UTF-8; else ``bad_request``."""
    params: dict[str, str] = {}
    # Decoded here, strictly: request.query turns bytes that are not UTF-8 into U+FFFD, so a scan bound
    # holding a lone surrogate (%ED%A0%80) would silently become another string.
    for part in request.query_string.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = unquote_plus(raw_name, errors="replace")
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise KvError(ErrorCode.BAD_REQUEST, f"unknown query parameter {shown(name)} (known: {known})")
        if name in params:
            raise KvError(ErrorCode.BAD_REQUEST, f"query parameter {shown(name)} is given twice")
        try:
            params[name] = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"query parameter {shown(name)} is not percent-encoded UTF-8") from exc
    return params


def refuse_query(request: Request) -> None:
    """``bad_request`` for any query parameter: a route that takes none never ignores one silently."""
    if request.query_string:
        query_params(request, ())


def check_fields(doc: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    missing = [f for f in required if f not in doc]
    if missing:
        raise KvError(ErrorCode.BAD_REQUEST, f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(str(f) for f in doc if f not in required and f not in optional)
    if unknown:
        # Named in short: the names are the client's bytes, and a body can hold megabytes of them.
        names = ", ".join(name if len(name) <= MAX_SHOWN_CHARS else shown(name) for name in unknown[:_FIELDS_NAMED])
        more = f" and {len(unknown) - _FIELDS_NAMED} more" if len(unknown) > _FIELDS_NAMED else ""
        raise KvError(ErrorCode.BAD_REQUEST, f"{where}: unknown field(s) {names}{more}")


def encoded_response(doc: object, as_msgpack: bool, status: int = 200) -> Response:
    if as_msgpack:
        return Response(body=msgpack.packb(doc, use_bin_type=True), status=status, headers=_MSGPACK_HEADERS)
    return json_response(doc, status)


def json_response(doc: object, status: int = 200) -> Response:
    return Response(body=json.dumps(doc, separators=(",", ":")).encode(), status=status, headers=_JSON_HEADERS)


def error_response(error: KvError) -> Response:
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
        return decode_base64(raw, field)
    try:
        return raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} is not valid UTF-8 text") from exc


def optional_int(doc: dict[str, Any], field: str) -> int | None:
    value = doc.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} must be an integer")
    return value
