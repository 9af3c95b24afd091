"""driver_stub's stub node as the simulator builds its nodes: writing Records to the node's SimStorage, and
registered in ``LIVE`` (see the ``stub_nodes`` fixture)."""

from __future__ import annotations

import random

import driver_stub
from driver_stub import PARTITION

from kvstore.config import ClusterConfig, FsyncPolicy, StorageConfig, local_cluster
from kvstore.storage.base import Storage

__all__ = ["LIVE", "PARTITION", "StubNode", "stub_config"]


class StubNode(driver_stub.StubNode):
    def __init__(self, node_id: str, config: ClusterConfig, storage: Storage, rng: random.Random) -> None:
        super().__init__(node_id, storage)
        LIVE[node_id] = self


# The stub now running as each node (a restart replaces it).
LIVE: dict[str, StubNode] = {}


def stub_config(fsync: FsyncPolicy, nodes: int = 2, batch_interval_ms: int = 10) -> ClusterConfig:
    storage = StorageConfig(engine="memory", fsync=fsync, batch_interval_ms=batch_interval_ms)
    return local_cluster(nodes, partitions=4, storage=storage)
