"""The admin routes: the fault route (authenticated, validated, and the installed policy really governs peer
traffic) and the replica copy route (authenticated, paged, every record shape, clear refusals)."""

from __future__ import annotations

import base64
import time

import aiohttp
import msgpack
import pytest
from copy_support import TOMBSTONE, VALUE, WITH_SIBLINGS, bearer
from server_support import error_of, raw_url

from kvstore.faults import ChaosPolicy
from kvstore.server.inprocess import InProcessCluster
from kvstore.server.routes_admin import ADMIN_COPIES_PREFIX, ADMIN_FAULTS_PATH, MAX_COPY_PAGE_BYTES
from kvstore.storage.base import Record


async def test_admin_route_needs_the_cluster_secret(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1") + ADMIN_FAULTS_PATH
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": cluster.config.secret}):
        async with http.put(url, json={"drop_probability": 1.0}, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"
    assert not isinstance(cluster.faults("n1").policy, ChaosPolicy)


async def test_cut_link_makes_forwards_time_out_until_cleared(cluster: InProcessCluster,
                                                              http: aiohttp.ClientSession) -> None:
    key = cluster.key_on("n2", "cut")
    url = cluster.url("n1") + ADMIN_FAULTS_PATH
    async with http.put(url, json={"cut_links": [["n1", "n2"]]}, headers=bearer(cluster)) as response:
        assert response.status == 200
        assert (await response.json())["faults"]["cut_links"] == [["n1", "n2"]]
    async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"v") as response:
        assert response.status == 504
        error = (await response.json())["error"]
        assert error["code"] == "timeout" and error["definite"] is False
    async with http.delete(url, headers=bearer(cluster)) as response:
        assert response.status == 200 and (await response.json())["faults"] is None
    async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"v2") as response:
        assert response.status == 200
    async with http.get(f"{cluster.url('n2')}/kv/{key}") as response:
        assert await response.read() == b"v2"


async def test_bad_policy_is_refused_and_changes_nothing(cluster: InProcessCluster,
                                                         http: aiohttp.ClientSession) -> None:
    url = cluster.url("n1") + ADMIN_FAULTS_PATH
    for body in ({"drop_probability": 2}, {"surprise": 1}, {"delay": {"kind": "warp"}}, [1, 2]):
        async with http.put(url, json=body, headers=bearer(cluster)) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"
    async with http.get(url, headers=bearer(cluster)) as response:
        assert (await response.json()) == {"faults": None}


async def test_clock_skew_applies_to_the_named_node_only(cluster: InProcessCluster,
                                                         http: aiohttp.ClientSession) -> None:
    policy = {"clocks": {"n1": {"offset_ms": 3_600_000, "drift_ppm": 0, "since_ms": 0}}}
    async with http.put(cluster.url("n1") + ADMIN_FAULTS_PATH, json=policy, headers=bearer(cluster)) as response:
        assert response.status == 200
    key = cluster.key_on("n1", "ttl")
    wall_before_ms = int(time.time() * 1000)
    async with http.put(f"{cluster.url('n1')}/kv/{key}?ttl_ms=1000", data=b"v") as response:
        assert response.status == 200
    async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
        expires = int(response.headers["X-Kv-Expires-At-Ms"])
    # The deadline is in n1's clock, an hour ahead of the wall clock.
    assert expires >= wall_before_ms + 3_600_000 + 1000


# ---------------------------------------------------------------- /admin/copies/{partition}


def held_by(cluster: InProcessCluster, node_id: str) -> int:
    """The first partition ``node_id`` holds a replica of."""
    return cluster.servers[node_id].node.partition_map.partitions_of(node_id)[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def copies_url(cluster: InProcessCluster, node_id: str, partition: object) -> str:
    return f"{cluster.url(node_id)}{ADMIN_COPIES_PREFIX}{partition}"


async def test_a_copy_needs_the_cluster_secret(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = copies_url(cluster, "n1", held_by(cluster, "n1"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": cluster.config.secret},
                    {"Authorization": f"Basic {cluster.config.secret}"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            assert (await error_of(response))["code"] == "unauthorized"
    # The scheme is case-insensitive, as on /admin/faults.
    async with http.get(url, headers={"Authorization": f"bearer  {cluster.config.secret}"}) as response:
        assert response.status == 200


async def test_a_copy_holds_every_record_shape_in_json_and_msgpack(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    partition = held_by(cluster, "n1")
    storage = cluster.servers["n1"].storage
    for key, record in (("a", VALUE), ("b", TOMBSTONE), ("c", WITH_SIBLINGS)):
        storage.write(partition, key, record)
    # Expired and tombstoned records are part of the copy: the node's clock is far past this one.
    storage.write(partition, "d", Record(b"old", 3, expires_at_ms=1))
    async with http.get(copies_url(cluster, "n1", partition), headers=bearer(cluster)) as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["node_id"] == "n1" and doc["partition"] == partition and doc["epoch"] == 1
    assert doc["replicas"] == ["n1"] and doc["next"] is None
    assert abs(doc["clock_ms"] - time.time() * 1000) < 60_000
    assert doc["records"] == [
        {"key": "a", "value": b64(b"\xffvalue"), "tombstone": False, "version": 7,
         "expires_at_ms": 9_000_000_000_000, "context": b64(b"\x01ctx"), "siblings": []},
        {"key": "b", "value": None, "tombstone": True, "version": 8, "expires_at_ms": 9_000_000_000_001,
         "context": "", "siblings": []},
        {"key": "c", "value": b64(b"mine"), "tombstone": False, "version": 9, "expires_at_ms": None, "context": "",
         "siblings": [{"value": b64(b"theirs"), "version": 4, "context": b64(b"\x02")},
                      {"value": None, "version": 5, "context": ""}]},
        {"key": "d", "value": b64(b"old"), "tombstone": False, "version": 3, "expires_at_ms": 1, "context": "",
         "siblings": []},
    ]
    headers = {**bearer(cluster), "Accept": "application/msgpack"}
    async with http.get(copies_url(cluster, "n1", partition), headers=headers) as response:
        assert response.status == 200 and response.content_type == "application/msgpack"
        packed = msgpack.unpackb(await response.read())
    assert [r["value"] for r in packed["records"]] == [b"\xffvalue", None, b"mine", b"old"]
    assert packed["records"][2]["siblings"][0] == {"value": b"theirs", "version": 4, "context": b"\x02"}


async def test_a_copy_comes_in_pages_that_follow_next(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    partition = held_by(cluster, "n2")
    keys = sorted(f"k{i:02}" for i in range(25))
    for version, key in enumerate(keys, 1):
        cluster.servers["n2"].storage.write(partition, key, Record(key.encode(), version))
    seen: list[str] = []
    pages = []
    query: dict[str, str] = {"limit": "10"}
    while True:
        async with http.get(copies_url(cluster, "n2", partition), params=query, headers=bearer(cluster)) as response:
            assert response.status == 200
            doc = await response.json()
        pages.append(len(doc["records"]))
        seen += [r["key"] for r in doc["records"]]
        if doc["next"] is None:
            break
        assert doc["next"] == seen[-1]
        query = {"after": doc["next"], "limit": "10"}
    assert pages == [10, 10, 5] and seen == keys
    # ``after`` need not be a stored key; the default page holds everything here.
    async with http.get(copies_url(cluster, "n2", partition), params={"after": "k10x"},
                        headers=bearer(cluster)) as response:
        doc = await response.json()
    assert [r["key"] for r in doc["records"]] == keys[11:] and doc["next"] is None


async def test_a_page_of_large_values_stops_at_its_byte_bound(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    partition = held_by(cluster, "n1")
    value = bytes(1 << 20)
    for i in range(9):
        cluster.servers["n1"].storage.write(partition, f"big{i}", Record(value, i + 1))
    headers = {**bearer(cluster), "Accept": "application/msgpack"}
    async with http.get(copies_url(cluster, "n1", partition), headers=headers) as response:
        doc = msgpack.unpackb(await response.read())
    # Eight 1 MiB values and their keys are over the 8 MiB bound: the page holds seven.
    assert MAX_COPY_PAGE_BYTES == 8 << 20
    assert [r["key"] for r in doc["records"]] == [f"big{i}" for i in range(7)] and doc["next"] == "big6"
    # A single record larger than the bound still comes, alone: a copy never gets stuck.
    async with http.get(copies_url(cluster, "n1", partition), params={"limit": "1"}, headers=headers) as response:
        assert len(msgpack.unpackb(await response.read())["records"]) == 1


async def test_a_partition_the_node_does_not_hold_is_a_404(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    partition = held_by(cluster, "n2")
    async with http.get(copies_url(cluster, "n1", partition), headers=bearer(cluster)) as response:
        assert response.status == 404
        error = await error_of(response)
    assert error["code"] == "not_found" and error["definite"] is True
    assert error["message"] == f"node n1 holds no replica of partition {partition} (its replicas: n2)"


@pytest.mark.parametrize(
    ("partition", "query", "message"),
    [
        ("x", {}, "partition must be a whole number in ASCII digits, got 'x'"),
        ("-1", {}, "partition must be 0..{last}, got -1"),
        ("{count}", {}, "partition must be 0..{last}, got {count}"),
        ("1.5", {}, "partition must be a whole number in ASCII digits, got '1.5'"),
        ("", {}, "partition must be a whole number in ASCII digits, got ''"),
        ("0", {"limit": "0"}, "limit must be 1..10000, got 0"),
        ("0", {"limit": "10001"}, "limit must be 1..10000, got 10001"),
        ("0", {"limit": "ten"}, "limit must be a whole number in ASCII digits, got 'ten'"),
        ("0", {"after": ""}, "after: key must be a non-empty string"),
        ("0", {"after": "k" * 1025}, "after: key is 1025 bytes; the limit is 1024"),
        ("0", {"start": "a"}, "unknown query parameter 'start' (known: after, limit)"),
    ],
)
async def test_bad_copy_requests_are_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession, partition: str, query: dict[str, str], message: str
) -> None:
    count = cluster.config.partitions
    partition, message = (text.format(count=count, last=count - 1) for text in (partition, message))
    # Partition 0 is n1's: every refusal here is about the request, never the 404 of a partition held elsewhere.
    async with http.get(copies_url(cluster, "n1", partition), params=query, headers=bearer(cluster)) as response:
        assert response.status == 400
        error = await error_of(response)
    assert (error["code"], error["message"]) == ("bad_request", message)


async def test_a_parameter_given_twice_or_badly_encoded_is_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    base = copies_url(cluster, "n1", 0)
    for path, code in ((f"{base}?limit=1&limit=2", "bad_request"), (f"{base}?after=%ff", "bad_request"),
                       (copies_url(cluster, "n1", "%ff"), "bad_key")):
        async with http.get(raw_url(path, ""), headers=bearer(cluster)) as response:
            assert response.status == 400
            assert (await error_of(response))["code"] == code
    async with http.put(base, headers=bearer(cluster)) as response:
        assert response.status == 405 and response.headers["Allow"] == "GET"
