"""Regressions found by probing a live cluster as an attacker and as a picky client.

Each test pins the answer a node must give: absolute-form request targets are served, error messages
quote client input only in short, a field given twice in a body is refused, ``Accept`` is negotiated as
HTTP says (case-insensitive, ``q=0`` means not acceptable), and the admin ``Bearer`` scheme is matched
case-insensitively.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from server_support import one_reply

from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.peer import FROM_HEADER, SIGNATURE_HEADER, sign

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


@pytest.fixture
async def node() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(1, partitions=4)) as running:
        yield running


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "definite": True}}


def port_of(cluster: InProcessCluster) -> int:
    return int(cluster.url("n1").rpartition(":")[2])


async def send(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.request(method, url, data=body, headers=headers or {}) as response:
        return response.status, json.loads(await response.read())


# ---------------------------------------------------------------- absolute-form request targets


async def test_an_absolute_form_target_is_served_like_its_path(node: InProcessCluster) -> None:
    # RFC 9112 3.2.2: a server must accept "GET http://host/path"; it answered 404 "no route for http://...".
    port = port_of(node)
    put = f"PUT http://127.0.0.1:{port}/kv/a%2Fb?ttl_ms=60000 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    reply = await one_reply(port, put.encode())
    status, body = reply.status, reply.body
    assert (status, json.loads(body)) == (200, {"key": "a/b", "version": 1})
    get = f"GET http://127.0.0.1:{port}/kv/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await one_reply(port, get.encode())
    status, headers, body = reply.status, reply.headers, reply.body
    assert (status, headers["x-kv-version"], body) == (200, "1", b"hi")
    # The authority names nothing the node checks: only the path and query are routed.
    health = b"GET HTTP://elsewhere.example/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await one_reply(port, health)
    status, body = reply.status, reply.body
    assert (status, json.loads(body)["status"]) == (200, "ok")


async def test_an_absolute_form_target_without_a_path_is_the_root(node: InProcessCluster) -> None:
    request = b"GET http://127.0.0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await one_reply(port_of(node), request)
    status, body = reply.status, reply.body
    assert (status, json.loads(body)) == (404, error("not_found", "no route for '/'"))


# ---------------------------------------------------------------- client input quoted only in short


async def test_a_long_content_type_is_quoted_only_in_short(node: InProcessCluster, http: aiohttp.ClientSession) -> None:
    media_type = "x" * 8000
    status, answer = await send(http, "POST", f"{node.url('n1')}/cas/k", b"{}", {"Content-Type": media_type})
    message = f"expected application/json or application/msgpack, got {'x' * 100!r}... (8000 characters)"
    assert (status, answer) == (415, error("unsupported_media_type", message))


async def test_a_long_content_encoding_is_quoted_only_in_short(
    node: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    status, answer = await send(http, "PUT", f"{node.url('n1')}/kv/k", b"v", {"Content-Encoding": "br" * 4000})
    message = f"Content-Encoding {'br' * 50!r}... (8000 characters) is not supported; use gzip, deflate or identity"
    assert (status, answer) == (415, error("unsupported_media_type", message))


async def test_a_long_unknown_query_parameter_is_quoted_only_in_short(
    node: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    status, answer = await send(http, "GET", f"{node.url('n1')}/scan?{'q' * 7000}=1")
    message = f"unknown query parameter {'q' * 100!r}... (7000 characters) (known: prefix, start, end, limit)"
    assert (status, answer) == (400, error("bad_request", message))


async def test_unknown_body_fields_are_named_in_short(node: InProcessCluster, http: aiohttp.ClientSession) -> None:
    # A 100 KB field name, or 20,000 names, came back whole in the 400.
    url = f"{node.url('n1')}/cas/k"
    long_name = {"expected": None, "new": None, "z" * 100_000: 1}
    status, answer = await send(http, "POST", url, json.dumps(long_name).encode(), JSON)
    message = f"cas: unknown field(s) {'z' * 100!r}... (100000 characters)"
    assert (status, answer) == (400, error("bad_request", message))
    many = {"expected": None, "new": None, **{f"f{i:05}": 1 for i in range(20_000)}}
    status, answer = await send(http, "POST", url, json.dumps(many).encode(), JSON)
    message = "cas: unknown field(s) f00000, f00001, f00002, f00003, f00004 and 19995 more"
    assert (status, answer) == (400, error("bad_request", message))


async def test_a_signed_frame_naming_an_unknown_message_type_is_quoted_only_in_short(
    http: aiohttp.ClientSession,
) -> None:
    config = loopback_config(2, partitions=4)
    async with InProcessCluster(config) as pair:
        name = "NoSuchMessage" + "X" * 5000
        # A dataclass frame (codec ext type 1) whose payload names a message type no one registered.
        body = msgpack.packb([msgpack.ExtType(1, msgpack.packb([name, 1]))])
        headers = {**MSGPACK, FROM_HEADER: "n1", SIGNATURE_HEADER: sign(config.secret, body)}
        status, answer = await send(http, "POST", f"{pair.url('n2')}/peer", body, headers)
    message = f"undecodable peer batch: unknown message type {name[:100]!r}"
    assert (status, answer) == (400, error("bad_request", message))


# ---------------------------------------------------------------- a field given twice


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"expected": null, "new": "a", "new": "b"}', "'new'"),
        (b'{"expected": null, "new": "a", "ttl_ms": 1, "ttl_ms": 60000}', "'ttl_ms'"),
    ],
)
async def test_a_json_field_given_twice_is_refused_and_nothing_is_written(
    node: InProcessCluster, http: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    # The parser kept the last copy silently; a proxy or audit log reading the first saw another write.
    url = node.url("n1")
    status, answer = await send(http, "POST", f"{url}/cas/k", body, JSON)
    assert (status, answer) == (400, error("bad_request", f"body is not valid JSON: field {field} is given twice"))
    status, answer = await send(http, "GET", f"{url}/kv/k")
    assert (status, answer) == (404, error("not_found", "key 'k' not found"))


async def test_a_field_given_twice_inside_a_batch_entry_is_refused(
    node: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    body = b'{"put": [{"key": "a", "value": "1"}, {"key": "b", "key": "c", "value": "2"}]}'
    status, answer = await send(http, "POST", f"{node.url('n1')}/batch", body, JSON)
    assert (status, answer) == (400, error("bad_request", "body is not valid JSON: field 'key' is given twice"))


async def test_a_msgpack_field_given_twice_is_refused(node: InProcessCluster, http: aiohttp.ClientSession) -> None:
    # msgpack.packb cannot write a map with a repeated key: fixmap of 3 entries, "new" twice.
    body = b"\x83" + msgpack.packb("expected") + b"\xc0" + (msgpack.packb("new") + msgpack.packb("x")) * 2
    status, answer = await send(http, "POST", f"{node.url('n1')}/cas/k", body, MSGPACK)
    assert (status, answer) == (400, error("bad_request", "body is not valid msgpack: field 'new' is given twice"))


# ---------------------------------------------------------------- Accept negotiation


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/msgpack", "application/msgpack"),
        ("Application/MsgPack", "application/msgpack"),
        ("application/json, application/x-msgpack", "application/msgpack"),
        ("application/msgpack;q=0.5, application/json;q=0.9", "application/json"),
        ("application/json, application/msgpack;q=0", "application/json"),
        ("application/msgpack; Q=0.0", "application/json"),
        ("application/msgpack;q=nan", "application/json"),
        ("application/msgpackx", "application/json"),
        ("*/*", "application/json"),
    ],
)
async def test_accept_chooses_msgpack_only_when_it_is_acceptable_and_preferred(
    node: InProcessCluster, http: aiohttp.ClientSession, accept: str, content_type: str
) -> None:
    async with http.put(f"{node.url('n1')}/kv/k", data=b"v", headers={"Accept": accept}) as response:
        assert (response.status, response.headers["Content-Type"]) == (200, content_type)
        body = await response.read()
    decoded = msgpack.unpackb(body) if content_type == "application/msgpack" else json.loads(body)
    assert decoded["key"] == "k"


# ---------------------------------------------------------------- admin authorization


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", "BEARER ", "Bearer   "])
async def test_the_bearer_scheme_is_case_insensitive(
    node: InProcessCluster, http: aiohttp.ClientSession, scheme: str
) -> None:
    headers = {"Authorization": scheme + node.config.secret}
    assert await send(http, "GET", f"{node.url('n1')}/admin/faults", b"", headers) == (200, {"faults": None})


@pytest.mark.parametrize("header", ["Basic x", "Bearer", "Bearer wrong", "Bearerx secret"])
async def test_admin_routes_still_refuse_anything_but_the_secret(
    node: InProcessCluster, http: aiohttp.ClientSession, header: str
) -> None:
    status, answer = await send(http, "GET", f"{node.url('n1')}/admin/faults", b"", {"Authorization": header})
    assert (status, answer) == (
        401,
        error("unauthorized", "admin routes need 'Authorization: Bearer <cluster secret>'"),
    )
