"""The admin fault route: authenticated, validated, and the installed policy really governs peer traffic."""

from __future__ import annotations

import time

import aiohttp

from kvstore.faults import ChaosPolicy
from kvstore.server.inprocess import InProcessCluster
from kvstore.server.routes_admin import ADMIN_FAULTS_PATH


def bearer(cluster: InProcessCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.config.secret}"}


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
