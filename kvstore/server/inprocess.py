"""Run real nodes inside the caller's event loop, on free loopback ports: for tests and benchmarks.

    config = loopback_config(3, partitions=16)
    async with InProcessCluster(config) as cluster:      # starts every node; stops them all on exit
        url = cluster.url("n1")

``InProcessCluster(config, start=("n1", "n2"))`` leaves the other members down (their ports closed),
which is how a test reaches an owner that refuses connections.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from kvstore.config import ClusterConfig, NodeAddress, StorageConfig
from kvstore.server.app import NodeServer
from kvstore.server.faults import FaultSwitch
from kvstore.storage.factory import open_storage
from partitioning.partition_map import PartitionMap


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def loopback_config(node_count: int, **overrides: Any) -> ClusterConfig:
    """Nodes n1..nK on free 127.0.0.1 ports; in-memory storage unless ``storage`` is given."""
    nodes = tuple(NodeAddress(f"n{i + 1}", "127.0.0.1", port) for i, port in enumerate(free_ports(node_count)))
    overrides.setdefault("storage", StorageConfig(engine="memory"))
    return ClusterConfig(nodes=nodes, **overrides)


class InProcessCluster:
    def __init__(self, config: ClusterConfig, start: Sequence[str] | None = None) -> None:
        self.config = config
        self._start_ids = tuple(config.node_ids if start is None else start)
        self.servers: dict[str, NodeServer] = {}

    def url(self, node_id: str) -> str:
        return self.config.node(node_id).url

    def key_on(self, node_id: str, stem: str) -> str:
        """The first key ``<stem>-<i>`` whose partition ``node_id`` owns."""
        # A running node's map (range mode, moves and joins change it); before any runs, the founders' layout.
        running = next(iter(self.servers.values()), None)
        partition_map = (
            running.node.partition_map
            if running is not None
            else PartitionMap.round_robin(self.config.founding_nodes, self.config.partitions)
        )
        for i in range(100 * self.config.partitions):
            key = f"{stem}-{i}"
            if partition_map.owner(partition_map.partition_for_key(key)) == node_id:
                return key
        raise ValueError(f"{node_id} owns no partition")

    def faults(self, node_id: str) -> FaultSwitch:
        return self.servers[node_id].faults

    async def start_node(self, node_id: str) -> NodeServer:
        server = NodeServer(self.config, node_id, open_storage(self.config, node_id))
        try:
            await server.start()
        except BaseException:
            await server.stop()
            raise
        self.servers[node_id] = server
        return server

    async def stop_node(self, node_id: str) -> None:
        await self.servers.pop(node_id).stop()

    async def __aenter__(self) -> Self:
        try:
            for node_id in self._start_ids:
                await self.start_node(node_id)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for node_id in list(self.servers):
            await self.stop_node(node_id)
