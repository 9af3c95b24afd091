"""Request bodies are decoded within bounds: compressed bodies are inflated no further than the route's
limit (the peer route only once the signature holds), unknown codings are 415, and structured documents
that nest too deep are a 400, never a 500 or a node that stops serving.

Most tests talk to the node's router through a server built here with ``auto_decompress=False``, the
setting kvstore needs, so they hold whatever server ``NodeServer`` builds; one test checks that server.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import pytest

from kvstore import codec
from kvstore.config import Limits
from kvstore.messages import Forward, GetOp, Message
from kvstore.server.http_codec import MAX_DOCUMENT_DEPTH_LEVELS, structured_body_limit_bytes
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.peer import FROM_HEADER, SIGNATURE_HEADER, peer_body_limit_bytes, sign

SECRET = "s3cret"
VALUE_LIMIT_BYTES = 512 * 1024
STRUCTURED_LIMIT_BYTES = structured_body_limit_bytes(VALUE_LIMIT_BYTES)
PEER_LIMIT_BYTES = peer_body_limit_bytes(VALUE_LIMIT_BYTES)
BOMB_INFLATED_BYTES = 256 << 20
# Far above every limit here (a few MiB), far below the bomb: inflating it would cross this.
MEMORY_BOUND_BYTES = 48 << 20
JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
TOO_DEEP = f"body nests deeper than {MAX_DOCUMENT_DEPTH_LEVELS} levels"


@dataclass
class Target:
    cluster: InProcessCluster
    url: str
    key: str


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """Node n2 of two; ``key`` is a key n2 owns."""
    config = loopback_config(2, secret=SECRET, limits=Limits(max_value_bytes=VALUE_LIMIT_BYTES))
    async with InProcessCluster(config) as cluster:
        yield Target(cluster, cluster.url("n2"), cluster.key_on("n2", "k"))


@functools.cache
def gzip_bomb() -> bytes:
    """``BOMB_INFLATED_BYTES`` of zeros as gzip: a few hundred KiB on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(BOMB_INFLATED_BYTES >> 20)]
    return b"".join([*parts, compressor.flush()])


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "definite": True}}


async def pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1 << 16):
        yield body[start : start + (1 << 16)]


async def send(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str], chunked: bool = False
) -> tuple[int, Any]:
    """The status and the answer (decoded when JSON); ``chunked`` sends no Content-Length."""
    data = pieces(body) if chunked else body
    async with http.request(method, url, data=data, headers=headers) as response:
        if response.headers.get("Content-Type") == JSON_TYPE:
            return response.status, await response.json()
        return response.status, await response.read()


async def send_traced(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str], chunked: bool = False
) -> tuple[int, Any, int]:
    """``send``, plus the peak of memory allocated by this process (client and node) meanwhile."""
    tracemalloc.start()
    try:
        status, answer = await send(http, method, url, body, headers, chunked)
        return status, answer, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def stored(http: aiohttp.ClientSession, target: Target) -> bytes | None:
    """The value under ``target.key``; that the node answers at all shows it still serves."""
    async with http.get(f"{target.url}/kv/{target.key}") as response:
        assert response.status in (200, 404)
        return await response.read() if response.status == 200 else None


def peer_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {"Content-Type": MSGPACK_TYPE, FROM_HEADER: "n1", SIGNATURE_HEADER: sign(SECRET, body), **extra}


def peer_batch() -> bytes:
    msg = Message("n1", "n2", 0, Forward(incarnation=1, forward_id=1, target_incarnation=0, op=GetOp("k")))
    return codec.encode((msg,))


# ---------------------------------------------------------------- compressed bombs


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("method", "path", "limit_bytes"),
    [
        ("PUT", "/kv/{key}", VALUE_LIMIT_BYTES),
        ("POST", "/cas/{key}", STRUCTURED_LIMIT_BYTES),
        ("POST", "/batch", STRUCTURED_LIMIT_BYTES),
    ],
)
async def test_a_gzip_bomb_is_refused_as_too_large_without_being_inflated(
    target: Target, http: aiohttp.ClientSession, method: str, path: str, limit_bytes: int, chunked: bool
) -> None:
    bomb = gzip_bomb()
    url = target.url + path.format(key=target.key)
    headers = {"Content-Type": JSON_TYPE, "Content-Encoding": "gzip"}
    status, answer, peak_bytes = await send_traced(http, method, url, bomb, headers, chunked)
    assert (status, answer) == (413, error("too_large", f"body inflates to over the limit of {limit_bytes} bytes"))
    assert peak_bytes < MEMORY_BOUND_BYTES
    assert await stored(http, target) is None


async def test_a_signed_gzip_bomb_on_the_peer_route_is_too_large(target: Target, http: aiohttp.ClientSession) -> None:
    bomb = gzip_bomb()
    headers = peer_headers(bomb, **{"Content-Encoding": "gzip"})
    status, answer, peak_bytes = await send_traced(http, "POST", f"{target.url}/peer", bomb, headers)
    assert (status, answer) == (413, error("too_large", f"body inflates to over the limit of {PEER_LIMIT_BYTES} bytes"))
    assert peak_bytes < MEMORY_BOUND_BYTES
    assert await stored(http, target) is None


@pytest.mark.parametrize("signature", ["00" * 32, "missing"])
async def test_an_unsigned_gzip_bomb_on_the_peer_route_is_refused_before_inflating(
    target: Target, http: aiohttp.ClientSession, signature: str
) -> None:
    headers = {"Content-Type": MSGPACK_TYPE, FROM_HEADER: "n1", "Content-Encoding": "gzip"}
    if signature != "missing":
        headers[SIGNATURE_HEADER] = signature
    status, answer, peak_bytes = await send_traced(http, "POST", f"{target.url}/peer", gzip_bomb(), headers)
    message = "bad signature" if signature != "missing" else f"missing {SIGNATURE_HEADER}"
    assert (status, answer) == (401, error("unauthorized", message))
    assert peak_bytes < MEMORY_BOUND_BYTES
    assert target.cluster.servers["n2"].node.inflight == 0


# ---------------------------------------------------------------- compressed bodies that are fine


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw deflate": raw_deflate,
    "x-gzip": gzip.compress,
}


def encoding_of(name: str) -> str:
    """The Content-Encoding a compressor's output is sent with: raw deflate goes as plain "deflate"."""
    return name.removeprefix("raw ")


@pytest.mark.parametrize("compressor", COMPRESSORS)
async def test_a_compressed_value_within_the_limit_is_stored_exactly(
    target: Target, http: aiohttp.ClientSession, compressor: str
) -> None:
    # Compressible, then incompressible (it grows a little when compressed): both at the limit exactly.
    compressible = bytes(range(256)) * 64 + b"a" * (VALUE_LIMIT_BYTES - 256 * 64)
    for version, value in enumerate((compressible, random.Random(2).randbytes(VALUE_LIMIT_BYTES)), start=1):
        body = COMPRESSORS[compressor](value)
        url = f"{target.url}/kv/{target.key}"
        assert await send(http, "PUT", url, body, {"Content-Encoding": encoding_of(compressor)}) == (
            200,
            {"key": target.key, "version": version},
        )
        assert await stored(http, target) == value


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_compressed_body_over_the_limit_as_sent_is_too_large_without_inflating(
    target: Target, http: aiohttp.ClientSession, chunked: bool
) -> None:
    body = gzip.compress(random.Random(1).randbytes(VALUE_LIMIT_BYTES + 8192))
    url = f"{target.url}/kv/{target.key}"
    status, answer = await send(http, "PUT", url, body, {"Content-Encoding": "gzip"}, chunked)
    wire_limit_bytes = VALUE_LIMIT_BYTES + VALUE_LIMIT_BYTES // 1024 + 1024
    if chunked:
        message = f"gzip body is over the limit of {wire_limit_bytes} bytes"
    else:
        message = f"gzip body is {len(body)} bytes; the limit is {wire_limit_bytes}"
    assert (status, answer) == (413, error("too_large", message))
    assert await stored(http, target) is None


async def test_a_value_one_byte_over_the_limit_once_inflated_is_too_large(
    target: Target, http: aiohttp.ClientSession
) -> None:
    body = gzip.compress(b"a" * (VALUE_LIMIT_BYTES + 1))
    status, answer = await send(http, "PUT", f"{target.url}/kv/{target.key}", body, {"Content-Encoding": "gzip"})
    assert (status, answer) == (
        413,
        error("too_large", f"body inflates to over the limit of {VALUE_LIMIT_BYTES} bytes"),
    )
    assert await stored(http, target) is None


@pytest.mark.parametrize("compressor", COMPRESSORS)
async def test_compressed_cas_and_batch_documents_are_read(
    target: Target, http: aiohttp.ClientSession, compressor: str
) -> None:
    compress = COMPRESSORS[compressor]
    headers = {"Content-Type": JSON_TYPE, "Content-Encoding": encoding_of(compressor)}
    cas = compress(json.dumps({"expected": None, "new": "first"}).encode())
    assert await send(http, "POST", f"{target.url}/cas/{target.key}", cas, headers) == (
        200,
        {"key": target.key, "version": 1},
    )
    batch = compress(json.dumps({"put": [{"key": target.key, "value": "second"}]}).encode())
    assert await send(http, "POST", f"{target.url}/batch", batch, headers) == (
        200,
        {"results": [{"ok": True, "key": target.key, "version": 2}]},
    )
    assert await stored(http, target) == b"second"


async def test_a_compressed_peer_batch_is_signed_as_sent(target: Target, http: aiohttp.ClientSession) -> None:
    batch = peer_batch()
    body = gzip.compress(batch)
    url = f"{target.url}/peer"
    assert await send(http, "POST", url, body, peer_headers(body, **{"Content-Encoding": "gzip"})) == (204, b"")
    # A signature over the inflated batch is not a signature over what was sent.
    status, answer = await send(http, "POST", url, body, peer_headers(batch, **{"Content-Encoding": "gzip"}))
    assert (status, answer) == (401, error("unauthorized", "bad signature"))


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, deflate", "gzip, gzip"])
async def test_an_unknown_content_encoding_is_415(target: Target, http: aiohttp.ClientSession, encoding: str) -> None:
    message = f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity"
    headers = {"Content-Encoding": encoding, "Content-Type": JSON_TYPE}
    for method, path in (("PUT", f"/kv/{target.key}"), ("POST", f"/cas/{target.key}")):
        body = b'{"expected": null, "new": "v"}'
        assert await send(http, method, target.url + path, body, headers) == (
            415,
            error("unsupported_media_type", message),
        )
    body = peer_batch()
    assert await send(
        http, "POST", f"{target.url}/peer", body, peer_headers(body, **{"Content-Encoding": encoding})
    ) == (
        415,
        error("unsupported_media_type", message),
    )
    assert await stored(http, target) is None


async def test_identity_is_no_compression(target: Target, http: aiohttp.ClientSession) -> None:
    headers = {"Content-Encoding": "identity"}
    assert await send(http, "PUT", f"{target.url}/kv/{target.key}", b"plain", headers) == (
        200,
        {"key": target.key, "version": 1},
    )
    assert await stored(http, target) == b"plain"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not gzip at all", "body is not valid gzip: Error -3 while decompressing data: incorrect header check"),
        (gzip.compress(b"v" * 1000)[:-6], "gzip body is truncated"),
        (gzip.compress(b"v") + b"more", "body has data after the end of its gzip stream"),
    ],
    ids=["garbage", "truncated", "trailing data"],
)
async def test_a_broken_compressed_body_is_400(
    target: Target, http: aiohttp.ClientSession, body: bytes, message: str
) -> None:
    status, answer = await send(http, "PUT", f"{target.url}/kv/{target.key}", body, {"Content-Encoding": "gzip"})
    assert (status, answer) == (400, error("bad_request", message))
    assert await stored(http, target) is None


@pytest.mark.parametrize(
    "batch",
    [
        b"\xc1",
        b"\x91" * 100_000 + b"\xc0",
        msgpack.packb([msgpack.ExtType(1, b"\xc1")]),
    ],
    ids=["not msgpack", "arrays nested 100000 deep", "bad message payload"],
)
async def test_a_signed_compressed_peer_batch_that_does_not_decode_is_400(
    target: Target, http: aiohttp.ClientSession, batch: bytes
) -> None:
    body = gzip.compress(batch)
    status, answer = await send(
        http, "POST", f"{target.url}/peer", body, peer_headers(body, **{"Content-Encoding": "gzip"})
    )
    assert status == 400
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"]["message"].startswith("undecodable peer batch: ")
    assert await stored(http, target) is None


async def test_signed_peer_messages_nested_2000_deep_are_400(target: Target, http: aiohttp.ClientSession) -> None:
    inner = msgpack.packb(["Message", "n1", "n2", 0, None])
    for _ in range(2000):
        inner = msgpack.packb(["Message", "n1", "n2", 0, msgpack.ExtType(1, inner)])
    body = msgpack.packb([msgpack.ExtType(1, inner)])
    status, answer = await send(http, "POST", f"{target.url}/peer", body, peer_headers(body))
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    assert await stored(http, target) is None


# ---------------------------------------------------------------- nesting depth


def nested_json(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def nested_msgpack(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"


STRUCTURED_ROUTES = [
    ("POST", "/cas/{key}", {}),
    ("POST", "/batch", {}),
    ("PUT", "/admin/faults", {"Authorization": f"Bearer {SECRET}"}),
]


@pytest.mark.parametrize(("method", "path", "auth"), STRUCTURED_ROUTES, ids=["cas", "batch", "admin"])
@pytest.mark.parametrize(
    "body",
    [nested_json(10_000), b'{"get": ' + nested_json(10_000) + b"}", b'{"new": ' + nested_json(33) + b"}"],
    ids=["10000 levels", "10000 levels inside an object", "34 levels"],
)
async def test_json_nested_too_deep_is_400(
    target: Target, http: aiohttp.ClientSession, method: str, path: str, auth: dict[str, str], body: bytes
) -> None:
    url = target.url + path.format(key=target.key)
    headers = {"Content-Type": JSON_TYPE, **auth}
    assert await send(http, method, url, body, headers) == (400, error("bad_request", TOO_DEEP))
    assert await stored(http, target) is None


@pytest.mark.parametrize(("method", "path", "auth"), STRUCTURED_ROUTES, ids=["cas", "batch", "admin"])
async def test_json_whose_brackets_do_not_balance_is_400(
    target: Target, http: aiohttp.ClientSession, method: str, path: str, auth: dict[str, str]
) -> None:
    url = target.url + path.format(key=target.key)
    headers = {"Content-Type": JSON_TYPE, **auth}
    status, answer = await send(http, method, url, b"[" * 10_000, headers)
    assert (status, answer) == (400, error("bad_request", "body is not valid JSON: its brackets do not balance"))


async def test_json_nested_exactly_at_the_limit_is_read(target: Target, http: aiohttp.ClientSession) -> None:
    # The object is one level, the list under "extra" the rest: the route reads it and names the field.
    body = b'{"expected": null, "new": "v", "extra": ' + nested_json(MAX_DOCUMENT_DEPTH_LEVELS - 1) + b"}"
    status, answer = await send(http, "POST", f"{target.url}/cas/{target.key}", body, {"Content-Type": JSON_TYPE})
    assert (status, answer) == (400, error("bad_request", "cas: unknown field(s) extra"))


async def test_brackets_and_escaped_quotes_inside_json_strings_are_text(
    target: Target, http: aiohttp.ClientSession
) -> None:
    value = '[{"\\' * 5000 + "]" * 3
    body = json.dumps({"expected": None, "new": value}).encode()
    assert await send(http, "POST", f"{target.url}/cas/{target.key}", body, {"Content-Type": JSON_TYPE}) == (
        200,
        {"key": target.key, "version": 1},
    )
    assert await stored(http, target) == value.encode()


async def test_json_must_be_utf8(target: Target, http: aiohttp.ClientSession) -> None:
    doc = {"expected": None, "new": "v"}
    url = f"{target.url}/cas/{target.key}"
    status, answer = await send(http, "POST", url, json.dumps(doc).encode("utf-16"), {"Content-Type": JSON_TYPE})
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    assert answer["error"]["message"].startswith("body is not valid JSON: 'utf-8' codec can't decode")
    # A UTF-8 byte order mark is ignored.
    body = b"\xef\xbb\xbf" + json.dumps(doc).encode()
    assert await send(http, "POST", url, body, {"Content-Type": JSON_TYPE}) == (200, {"key": target.key, "version": 1})


@pytest.mark.parametrize("levels", [MAX_DOCUMENT_DEPTH_LEVELS, 1000, 100_000])
async def test_msgpack_nested_too_deep_is_400(target: Target, http: aiohttp.ClientSession, levels: int) -> None:
    # {"new": <levels of arrays>}: one level more than the arrays. msgpack itself stops at 1024 levels.
    body = b"\x81\xa3new" + nested_msgpack(levels)
    headers = {"Content-Type": MSGPACK_TYPE}
    for path in (f"/cas/{target.key}", "/batch"):
        assert await send(http, "POST", target.url + path, body, headers) == (400, error("bad_request", TOO_DEEP))
    assert await stored(http, target) is None


async def test_msgpack_nested_exactly_at_the_limit_is_read(target: Target, http: aiohttp.ClientSession) -> None:
    body = b"\x81\xa3new" + nested_msgpack(MAX_DOCUMENT_DEPTH_LEVELS - 1)
    status, answer = await send(http, "POST", f"{target.url}/cas/{target.key}", body, {"Content-Type": MSGPACK_TYPE})
    assert (status, answer) == (400, error("bad_request", "cas: missing field(s) expected"))
