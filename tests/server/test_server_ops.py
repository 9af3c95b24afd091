"""GET /cluster, /health, /metrics and /openapi.json on a live cluster."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from server_support import ADMIN_ROUTE_TEMPLATES, CLIENT_ROUTE_TEMPLATES

from kvstore.server.inprocess import InProcessCluster


async def test_cluster_describes_members_health_and_the_partition_map(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    # One forwarded write makes n1 talk to n2, so n1 has seen n2 up; n3 it has not contacted yet.
    async with http.put(f"{cluster.url('n1')}/kv/{cluster.key_on('n2', 'k')}", data=b"v"):
        pass
    async with http.get(f"{cluster.url('n1')}/cluster") as response:
        body = await response.json()
    assert body["node_id"] == "n1"
    assert (body["mode"], body["fsync"], body["engine"], body["epoch"]) == ("single", "always", "memory", 1)
    partitions = cluster.config.partitions
    assert body["partitions"] == partitions
    members = {m["node_id"]: m for m in body["members"]}
    assert members["n1"]["health"] == "self"
    assert members["n2"]["health"] == "up"
    assert members["n3"]["health"] == "unknown"
    n2 = cluster.config.node("n2")
    assert members["n2"]["address"] == f"127.0.0.1:{n2.port}"
    assert members["n2"]["url"] == n2.url
    assert members["n1"]["partitions"] == list(range(0, partitions, 3))
    assert members["n2"]["partitions"] == list(range(1, partitions, 3))
    replicas = body["partition_map"]["replicas"]
    assert replicas[:4] == [["n1"], ["n2"], ["n3"], ["n1"]]
    assert len(replicas) == partitions


async def test_health_reports_storage_progress(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    async with http.put(f"{cluster.url('n1')}/kv/{cluster.key_on('n1', 'h')}", data=b"v"):
        pass
    async with http.get(f"{cluster.url('n1')}/health") as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "ok",
            "node_id": "n1",
            "inflight": 0,
            # One put is two changes: the record and its partition's applied index.
            "written_lsn": 2,
            "synced_lsn": 2,
        }


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_parse_and_count_requests_errors_and_storage(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n1")
    local_keys = [cluster.key_on("n1", f"m{i}") for i in range(3)]
    for key in local_keys:
        async with http.put(f"{url}/kv/{key}", data=b"v"):
            pass
    for _ in range(2):
        async with http.get(f"{url}/kv/absent"):
            pass
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    got = samples(text)
    put_route = (("route", "PUT /kv/{key}"), ("status", "200"))
    assert got[("kvstore_http_requests_total", put_route)] == 3
    assert got[("kvstore_http_requests_total", (("route", "GET /kv/{key}"), ("status", "404")))] == 2
    assert got[("kvstore_errors_total", (("code", "not_found"),))] == 2
    assert got[("kvstore_http_request_duration_seconds_count", (("route", "PUT /kv/{key}"),))] == 3
    assert got[("kvstore_http_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "PUT /kv/{key}")))] == 3
    # Each put is two changes (the record, its partition's applied index).
    assert got[("kvstore_storage_written_lsn", ())] == 6
    assert got[("kvstore_storage_synced_lsn", ())] == 6
    assert got[("kvstore_keys", ())] == 3
    assert got[("kvstore_inflight_requests", ())] == 0
    assert got[("kvstore_held_effects", ())] == 0
    assert got[("kvstore_peer_queue_depth", (("peer", "n2"),))] == 0
    assert got[("kvstore_peer_queue_depth", (("peer", "n3"),))] == 0


async def test_openapi_describes_every_client_route(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{cluster.url('n2')}/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"] == "3.1.0"
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    routes = cluster.servers["n2"].router.routes
    assert described == {(r.method, r.template) for r in routes if not r.internal}
    assert described == {*CLIENT_ROUTE_TEMPLATES, *ADMIN_ROUTE_TEMPLATES}
    assert "/peer" not in doc["paths"]
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"]
            assert op["responses"]


async def test_operational_routes_refuse_query_parameters(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    for path in ("/cluster", "/health", "/metrics", "/openapi.json"):
        async with http.get(f"{cluster.url('n1')}{path}?verbose=1") as response:
            assert response.status == 400
            body = await response.json()
        message = "unknown query parameter 'verbose' (known: none)"
        assert body == {"error": {"code": "bad_request", "message": message, "definite": True}}
