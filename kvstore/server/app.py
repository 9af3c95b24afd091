"""NodeServer: one node's storage, Node, pump, peer transport and HTTP API, wired together.

Create it inside a running event loop, then ``await start()``; ``await stop()`` answers or refuses
everything still open, syncs and closes storage. Used by ``kvstore.server.main`` for node processes and
by tests to run nodes inside the test's own loop.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

from kvstore.config import ClusterConfig
from kvstore.messages import Message
from kvstore.node import Node
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.http_server import EdgeServer
from kvstore.server.metrics import NodeGauges, NodeMetrics
from kvstore.server.peer import PeerInbox, PeerTransport
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.server.routes_admin import AdminRoutes, CopyRoutes, OrderRoutes
from kvstore.server.routes_changes import ChangesRoutes
from kvstore.server.routes_cluster import ClusterRoutes
from kvstore.server.routes_features import FeatureRoutes
from kvstore.server.routes_kv import KvRoutes
from kvstore.storage.base import Storage

log = logging.getLogger(__name__)

# How long stopping waits for open HTTP requests to finish before closing their connections.
SHUTDOWN_TIMEOUT_S = 5.0


class NodeServer:
    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        storage: Storage,
        *,
        host: str | None = None,
        faults: FaultSwitch | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        address = config.node(node_id)
        self.node_id = node_id
        self.config = config
        self.host = host or address.host
        self.port = address.port
        self.storage = storage
        self.faults = faults or FaultSwitch()
        self.node = Node(node_id, config, storage, random.Random(int.from_bytes(os.urandom(8), "big")))
        self.transport = PeerTransport(
            node_id,
            config,
            self.faults,
            on_send_failed=self._send_failed,
            deliver_local=self._deliver_local,
            address_of=self.node.address_of,
        )
        clock = NodeClock(node_id, self.faults)
        self.pump = Pump(
            self.node,
            storage,
            clock,
            self.transport.send,
            fsync=config.storage.fsync,
            batch_interval_ms=config.storage.batch_interval_ms,
            max_inflight=config.limits.max_inflight,
            request_timeout_ms=config.timeouts.request_timeout_ms,
            on_fatal=on_fatal,
            records_from_log=config.mode == "leader",
        )
        leaderless = self.node.leaderless
        self.metrics = NodeMetrics(
            node_id,
            NodeGauges(
                inflight=lambda: self.pump.outstanding,
                held_effects=lambda: self.pump.held_effects,
                peer_queues=self._peer_queues,
                peer_up=self._peer_up,
                written_lsn=lambda: storage.written_lsn,
                synced_lsn=lambda: storage.synced_lsn,
                key_count=storage.key_count,
                open_connections=lambda: self._edge.open_connections(),
                partition_stats=storage.partition_stats,
                moves_in_progress=lambda: self.node.moves_in_progress,
                move_stats=lambda: self.node.move_stats,
                range_changes=lambda: self.node.range_changes,
                peer_messages_sent=lambda: self.transport.sent_by_kind,
                peer_batches_sent=lambda: self.transport.batches_sent,
                raft_messages_sent=lambda: self.transport.raft_items_by_kind,
                raft_stats=lambda: self.node.raft_stats if config.mode == "leader" else None,
                leaders_held=self.node.leads,
                follower_lag=self._follower_lag,
                leaderless_stats=lambda: None if leaderless is None else leaderless.stats,
                handoff_stats=lambda: None if leaderless is None else leaderless.handoff.stats,
            ),
        )
        self.router = Router(self.metrics)
        # Looked up per request: the node replaces its map as it learns.
        partition_of = lambda key: self.node.partition_map.partition_for_key(key)  # noqa: E731
        KvRoutes(self.pump, config.limits, partition_of, self.metrics.read_siblings).register(self.router)
        ChangesRoutes(self.pump, lambda: self.node.partition_map.partition_count).register(self.router)
        FeatureRoutes(self.pump, config).register(self.router)
        ClusterRoutes(self.node, config, self.pump, storage, self.transport, self.metrics).register(self.router)
        AdminRoutes(config, self.node, self.faults).register(self.router)
        CopyRoutes(config, self.node, storage, clock).register(self.router)
        OrderRoutes(config, self.node, self.pump).register(self.router)
        inbox = PeerInbox(node_id, config, self.pump.deliver, is_peer=self.node.is_peer)
        inbox.register(self.router)
        self._edge = EdgeServer(self.router.handle, self.router.admit, config, self.metrics, node_id)

    def _peers(self) -> list[str]:
        return [p for p in self.node.known_nodes if p != self.node_id]

    def _peer_queues(self) -> dict[str, int]:
        """Every node this one knows, with what is queued for it (0 for one it never sent to)."""
        depths = self.transport.queue_depths()
        return {p: depths.get(p, 0) for p in self._peers()}

    def _peer_up(self) -> dict[str, bool]:
        health = self.transport.health()
        return {p: p in health and health[p].state == "up" for p in self._peers()}

    def _follower_lag(self) -> dict[str, int]:
        """Per follower node, its largest lag over the partitions this node leads."""
        lag: dict[str, int] = {}
        for entry in self.node.leadership():
            followers = entry.get("followers", ())
            assert isinstance(followers, list | tuple)
            for follower in followers:
                lag[follower["node_id"]] = max(lag.get(follower["node_id"], 0), follower["lag"])
        return lag

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _send_failed(self, msg: Message) -> None:
        self.pump.send_failed(msg)

    def _deliver_local(self, msg: Message) -> None:
        self.pump.deliver(msg)

    async def start(self) -> None:
        await self.transport.start()
        self.pump.start()
        await self._edge.start(self.host, self.port)

    async def stop(self) -> None:
        """Refuse new work, answer what is open, make every write durable, then close."""
        await self.pump.close()
        await self._edge.shutdown(SHUTDOWN_TIMEOUT_S)
        await self.transport.close()
        try:
            self.storage.close()
        except Exception:
            log.exception("node %s could not sync and close its storage", self.node_id)
