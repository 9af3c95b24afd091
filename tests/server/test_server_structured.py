"""POST /cas/{key}, GET /scan and POST /batch, in JSON and msgpack, against a live three-node cluster."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import msgpack
import pytest

from kvstore.server.inprocess import InProcessCluster

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


async def put(http: aiohttp.ClientSession, url: str, key: str, value: bytes) -> None:
    async with http.put(f"{url}/kv/{key}", data=value) as response:
        assert response.status == 200


async def get_value(http: aiohttp.ClientSession, url: str, key: str) -> bytes | None:
    async with http.get(f"{url}/kv/{key}") as response:
        return await response.read() if response.status == 200 else None


async def post_json(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers=JSON) as response:
        return response.status, await response.json()


async def post_msgpack(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    async with http.post(url, data=msgpack.packb(body), headers=MSGPACK) as response:
        if response.status >= 400:
            return response.status, await response.json()
        assert response.headers["Content-Type"] == "application/msgpack"
        return response.status, msgpack.unpackb(await response.read())


# ---------------------------------------------------------------- CAS


async def test_cas_creates_replaces_and_deletes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1")
    key = cluster.key_on("n2", "cas")
    assert await post_json(http, f"{url}/cas/{key}", {"expected": None, "new": "one"}) == (
        200,
        {"key": key, "version": 1},
    )
    assert await post_json(http, f"{url}/cas/{key}", {"expected": "one", "new": "two"}) == (
        200,
        {"key": key, "version": 2},
    )
    assert await get_value(http, url, key) == b"two"
    assert await post_json(http, f"{url}/cas/{key}", {"expected": "two", "new": None}) == (
        200,
        {"key": key, "deleted": True},
    )
    assert await get_value(http, url, key) is None


async def test_cas_mismatch_is_409_and_changes_nothing(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n3")
    await put(http, url, "c", b"actual")
    status, body = await post_json(http, f"{url}/cas/c", {"expected": "other", "new": "x"})
    assert status == 409
    assert body == {
        "error": {"code": "precondition_failed", "message": "key 'c' is not the expected value", "definite": True}
    }
    status, body = await post_json(http, f"{url}/cas/c", {"expected": None, "new": "x"})
    assert status == 409
    assert body["error"]["message"] == "key 'c' is not absent"
    assert await get_value(http, url, "c") == b"actual"


async def test_cas_takes_base64_values_and_a_ttl(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1")
    raw = b"\xff\x00\xfe"
    b64 = base64.b64encode(raw).decode()
    body = {"expected": None, "new": b64, "encoding": "base64", "ttl_ms": 60_000}
    assert (await post_json(http, f"{url}/cas/b", body))[0] == 200
    assert await get_value(http, url, "b") == raw
    async with http.get(f"{url}/kv/b") as response:
        assert "X-Kv-Expires-At-Ms" in response.headers
    body = {"expected": b64, "new": base64.b64encode(b"next").decode(), "encoding": "base64"}
    assert (await post_json(http, f"{url}/cas/b", body))[0] == 200
    assert await get_value(http, url, "b") == b"next"


async def test_cas_accepts_msgpack_with_raw_bytes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n2")
    assert await post_msgpack(http, f"{url}/cas/m", {"expected": None, "new": b"\x80raw"}) == (
        200,
        {"key": "m", "version": 1},
    )
    assert await get_value(http, url, "m") == b"\x80raw"


@pytest.mark.parametrize(
    ("body", "message_part"),
    [
        ({"new": "x"}, "missing field(s) expected"),
        ({"expected": None, "new": "x", "extra": 1}, "unknown field(s) extra"),
        ({"expected": None, "new": 5}, "new must be a string"),
        ({"expected": None, "new": "!!", "encoding": "base64"}, "new is not valid base64"),
        ({"expected": None, "new": "x", "encoding": "latin-1"}, "encoding must be one of utf-8, base64"),
        ({"expected": None, "new": "x", "ttl_ms": "soon"}, "ttl_ms must be an integer"),
        ({"expected": None, "new": "x", "ttl_ms": 0}, "ttl must be a positive whole number"),
        (["expected", "new"], "body must be an object"),
    ],
)
async def test_cas_refuses_bad_bodies(
    cluster: InProcessCluster, http: aiohttp.ClientSession, body: object, message_part: str
) -> None:
    status, error = await post_json(http, f"{cluster.url('n1')}/cas/k", body)
    assert status == 400
    assert error["error"]["code"] == "bad_request"
    assert message_part in error["error"]["message"]


async def test_cas_refuses_undecodable_bodies_and_other_media_types(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = f"{cluster.url('n1')}/cas/k"
    async with http.post(url, data=b"{not json", headers=JSON) as response:
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]
    async with http.post(url, data=b"\xc1", headers=MSGPACK) as response:
        assert response.status == 400
        assert "not valid msgpack" in (await response.json())["error"]["message"]
    async with http.post(url, data=b"expected=x", headers={"Content-Type": "text/plain"}) as response:
        assert response.status == 415
        assert (await response.json())["error"]["code"] == "unsupported_media_type"


# ---------------------------------------------------------------- scan


async def fill(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1")
    for name in ("ann", "bob", "cat", "dan", "eve"):
        await put(http, url, f"user/{name}", name.upper().encode())
    await put(http, url, "user/bin", b"\xff\xfe")
    await put(http, url, "zzz", b"other")


async def test_scan_by_prefix_gathers_every_node_in_key_order(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    await fill(cluster, http)
    async with http.get(f"{cluster.url('n2')}/scan", params={"prefix": "user/"}) as response:
        body = await response.json()
    assert [item["key"] for item in body["items"]] == [
        "user/ann", "user/bin", "user/bob", "user/cat", "user/dan", "user/eve",
    ]
    assert body["items"][0] == {"key": "user/ann", "value": "ANN", "version": body["items"][0]["version"]}
    assert body["items"][1] == {
        "key": "user/bin",
        "value_b64": base64.b64encode(b"\xff\xfe").decode(),
        "version": body["items"][1]["version"],
    }
    assert body["truncated"] is False
    # Every key lives on one node, and the owner counted it there.
    assert sum(server.storage.key_count() for server in cluster.servers.values()) == 7


async def test_scan_by_range_with_a_limit_reports_truncation(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    await fill(cluster, http)
    params = {"start": "user/b", "end": "user/e", "limit": "2"}
    async with http.get(f"{cluster.url('n3')}/scan", params=params) as response:
        body = await response.json()
    assert [item["key"] for item in body["items"]] == ["user/bin", "user/bob"]
    assert body["truncated"] is True
    params["limit"] = "4"
    async with http.get(f"{cluster.url('n3')}/scan", params=params) as response:
        body = await response.json()
    assert [item["key"] for item in body["items"]] == ["user/bin", "user/bob", "user/cat", "user/dan"]
    assert body["truncated"] is False


async def test_scan_in_msgpack_carries_raw_bytes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    await fill(cluster, http)
    async with http.get(f"{cluster.url('n1')}/scan?prefix=user/bi", headers=MSGPACK) as response:
        body = msgpack.unpackb(await response.read())
    assert body["items"][0]["key"] == "user/bin"
    assert body["items"][0]["value"] == b"\xff\xfe"


@pytest.mark.parametrize(
    ("query", "message_part"),
    [
        ("prefix=a&start=b", "either prefix or start/end"),
        ("limit=ten", "limit must be a whole number"),
        ("limit=0", "scan limit must be 1..10000"),
        ("limit=10001", "scan limit must be 1..10000"),
        ("start=b&end=a", "scan end must not be before start"),
        ("order=desc", "unknown query parameter 'order'"),
    ],
)
async def test_scan_refuses_bad_queries(
    cluster: InProcessCluster, http: aiohttp.ClientSession, query: str, message_part: str
) -> None:
    async with http.get(f"{cluster.url('n1')}/scan?{query}") as response:
        assert response.status == 400
        assert message_part in (await response.json())["error"]["message"]


# ---------------------------------------------------------------- batch


async def test_batch_put_then_get_across_nodes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1")
    keys = [cluster.key_on(node_id, "batch") for node_id in ("n1", "n2", "n3")]
    entries = [
        {"key": keys[0], "value": "text"},
        {"key": keys[1], "value_b64": base64.b64encode(b"\x00\xff").decode()},
        {"key": keys[2], "value": "short-lived", "ttl_ms": 60_000},
    ]
    status, body = await post_json(http, f"{url}/batch", {"put": entries})
    assert status == 200
    assert body == {"results": [{"ok": True, "key": key, "version": 1} for key in keys]}

    status, body = await post_json(http, f"{url}/batch", {"get": [*keys, "missing"]})
    assert status == 200
    results = body["results"]
    assert results[0] == {"ok": True, "key": keys[0], "value": "text", "version": 1}
    assert results[1] == {"ok": True, "key": keys[1], "value_b64": "AP8=", "version": 1}
    assert results[2]["value"] == "short-lived"
    assert "expires_at_ms" in results[2]
    assert results[3] == {
        "ok": False,
        "key": "missing",
        "error": {"code": "not_found", "message": "key 'missing' not found", "definite": True},
    }


async def test_batch_in_msgpack_carries_raw_bytes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n2")
    status, body = await post_msgpack(http, f"{url}/batch", {"put": [{"key": "raw", "value": b"\x01\x02"}]})
    assert (status, body) == (200, {"results": [{"ok": True, "key": "raw", "version": 1}]})
    status, body = await post_msgpack(http, f"{url}/batch", {"get": ["raw"]})
    assert body == {"results": [{"ok": True, "key": "raw", "value": b"\x01\x02", "version": 1}]}


@pytest.mark.parametrize(
    ("body", "status", "message_part"),
    [
        ({"get": ["a"], "put": []}, 400, 'batch body must be {"get": [keys]} or {"put": [entries]}'),
        ({"delete": ["a"]}, 400, "batch body must be"),
        ({"get": "a"}, 400, "batch entries must be a list"),
        ({"get": []}, 400, "a batch needs at least one entry"),
        ({"get": [""]}, 400, "get[0]: key must be a non-empty string"),
        ({"get": ["a", "b", ""]}, 400, "get[2]: key must be a non-empty string"),
        ({"put": ["a"]}, 400, "put[0] must be an object"),
        ({"put": [{"key": "a"}]}, 400, "put[0]: missing field(s) value"),
        ({"put": [{"key": "a", "value": "v", "color": "red"}]}, 400, "put[0]: unknown field(s) color"),
        ({"get": [f"k{i}" for i in range(1001)]}, 413, "a batch holds at most 1000 entries"),
    ],
)
async def test_batch_refuses_bad_bodies(
    cluster: InProcessCluster, http: aiohttp.ClientSession, body: object, status: int, message_part: str
) -> None:
    got_status, error = await post_json(http, f"{cluster.url('n1')}/batch", body)
    assert got_status == status
    assert message_part in error["error"]["message"]
