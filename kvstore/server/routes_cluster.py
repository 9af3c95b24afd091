"""Operational routes: ``/cluster``, ``/health``, ``/metrics`` and ``/openapi.json``.

In leaderless mode ``/cluster`` also shows, under ``leaderless``, each partition's preference list with the hints
this node holds per target, and this node's hinted handoff, read repair and anti-entropy counters.
"""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST

from kvstore.config import ClusterConfig
from kvstore.leaderless_mode import LeaderlessMode
from kvstore.node import Node
from kvstore.server.http_codec import JSON_TYPE, encoded_response, json_response, refuse_query, wants_msgpack
from kvstore.server.http_message import Request, Response
from kvstore.server.metrics import NodeMetrics
from kvstore.server.openapi import build_openapi
from kvstore.server.peer import PeerTransport
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.storage.base import Storage
from partitioning.partition_map import PartitionMap


class ClusterRoutes:
    def __init__(
        self,
        node: Node,
        config: ClusterConfig,
        pump: Pump,
        storage: Storage,
        transport: PeerTransport,
        metrics: NodeMetrics,
    ) -> None:
        self._node = node
        self._config = config
        self._pump = pump
        self._storage = storage
        self._transport = transport
        self._metrics = metrics
        self._router: Router | None = None
        self._openapi_body: bytes | None = None

    def register(self, router: Router) -> None:
        self._router = router
        router.add("GET", "/cluster", self.cluster)
        router.add("GET", "/health", self.health)
        router.add("GET", "/metrics", self.metrics)
        router.add("GET", "/openapi.json", self.openapi)

    async def cluster(self, request: Request, _: str) -> Response:
        refuse_query(request)
        node, config = self._node, self._config
        partition_map = node.partition_map
        health = self._transport.health()
        members = []
        for entry in partition_map.roster:
            if entry.state == "removed" and not partition_map.partitions_of(entry.node_id):
                continue
            address = node.address_of(entry.node_id)
            member: dict[str, object] = {
                "node_id": entry.node_id,
                "address": address,
                "url": f"http://{address}" if address else None,
                "state": entry.state,
                "partitions": list(partition_map.owned_by(entry.node_id)),
            }
            peer = health.get(entry.node_id)
            if entry.node_id == node.node_id:
                member["health"] = "self"
            elif peer is None:
                member["health"] = "unknown"
            else:
                member["health"] = peer.state
                if peer.last_error is not None:
                    member["last_error"] = peer.last_error
            members.append(member)
        doc = {
            "node_id": node.node_id,
            "cluster": config.name,
            "mode": config.mode,
            "fsync": config.storage.fsync,
            "engine": config.storage.engine,
            "epoch": partition_map.epoch,
            "partitions": partition_map.partition_count,
            "members": members,
            # Whether this node's map is where its rebalancer wants it and it sends no move now.
            "balanced": node.balanced,
            "moves_in_progress": node.moves_in_progress,
            "replicas": config.replication_factor,
            "partitioner": partition_map.partitioner,
            "partition_map": partition_map.to_json(),
            # What this node stores, per partition: each node reports its own.
            "partition_stats": [
                {"partition": p, "records": count, "bytes": size_bytes}
                for p, (count, size_bytes) in self._storage.partition_stats().items()
            ],
        }
        if config.mode == "leader":
            doc["leadership"] = node.leadership()
        if node.leaderless is not None:
            doc["leaderless"] = leaderless_view(node.leaderless, partition_map)
        ranges = partition_map.ranges
        if ranges is not None:
            doc["ranges"] = [
                {"partition": r.partition, "start": r.start, "end": r.end, "owner": partition_map.owner(r.partition)}
                for r in ranges.ranges()
            ]
        return encoded_response(doc, wants_msgpack(request))

    async def health(self, request: Request, _: str) -> Response:
        refuse_query(request)
        return json_response(
            {
                "status": "ok",
                "node_id": self._node.node_id,
                "inflight": self._pump.outstanding,
                "written_lsn": self._storage.written_lsn,
                "synced_lsn": self._storage.synced_lsn,
            }
        )

    async def metrics(self, request: Request, _: str) -> Response:
        refuse_query(request)
        return Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: Request, _: str) -> Response:
        refuse_query(request)
        if self._openapi_body is None:
            assert self._router is not None, "routes used before register()"
            config = self._config
            doc = build_openapi(self._router.routes, config.limits, config.mode, config.replication_factor)
            self._openapi_body = json.dumps(doc, indent=1).encode()
        return Response(body=self._openapi_body, headers={"Content-Type": JSON_TYPE})


def leaderless_view(mode: LeaderlessMode, partition_map: PartitionMap) -> dict[str, object]:
    """Per partition its preference list and the hints this node holds per target; this node's counters."""
    hints: dict[int, dict[str, int]] = {}
    for hint in mode.handoff.hints():
        per_target = hints.setdefault(hint.partition, {})
        per_target[hint.target] = per_target.get(hint.target, 0) + 1
    handoff, stats = mode.handoff.stats, mode.stats
    return {
        "partitions": [
            {"partition": p, "preference": list(replicas), "hints": dict(sorted(hints.get(p, {}).items()))}
            for p, replicas in enumerate(partition_map.replicas)
        ],
        "hints": {
            "held": handoff.held,
            "bytes": handoff.held_bytes,
            "delivered": handoff.delivered,
            "refused_full": handoff.refused_full,
        },
        "read_repairs": stats.read_repairs,
        "anti_entropy": {
            "rounds": stats.ae_rounds,
            "keys_repaired": stats.ae_keys_repaired,
            "bytes_sent": stats.ae_bytes_sent,
            "bytes_received": stats.ae_bytes_received,
        },
    }
