"""A 3-node leader-mode kvstore cluster for the replication benchmarks: start it, find who leads what, count
what its nodes sent.

``bench/replication_vs_etcd.py`` and ``bench/failover.py`` share it. The cluster is ``kvstore.cluster.LocalCluster``
(real node processes, sqlite storage, data under the bench's temporary directory). A ``LeaderView`` is what
every node's ``GET /cluster`` says of itself: the partitions whose replica there is leader, so a key's
request goes straight to its partition's leader, as ``kvstore.client`` sends it to the owner.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kvstore.cluster import LocalCluster, cluster_view
from partitioning.partition_map import PartitionMap

NODES = 3
LEADER_WAIT_S = 30.0
POLL_S = 0.05
SCRAPE_TIMEOUT_S = 5.0
MESSAGES_METRIC = "kvstore_peer_messages_sent_total"
BATCHES_METRIC = "kvstore_peer_batches_sent_total"
# The pseudo-kind under which ``peer_traffic`` reports the POST /peer batches that carried the messages.
BATCHES = "batches"


class BenchError(RuntimeError):
    """A cluster that would not start or settle, or a load run that failed; the message says which."""


@dataclass(frozen=True)
class LeaderView:
    partition_map: PartitionMap
    # Partition -> node id of the replica that says it leads it (the highest term, if two say so).
    leaders: dict[int, str]
    urls: dict[str, str]

    def leader_of(self, key: str) -> str:
        return self.leaders[self.partition_map.partition_for_key(key)]

    def url_for(self, key: str) -> str:
        return self.urls[self.leader_of(key)]

    def led_by(self, node_id: str) -> list[int]:
        return sorted(p for p, leader in self.leaders.items() if leader == node_id)


def start_leader_cluster(directory: Path, fsync: str) -> LocalCluster:
    """A 3-node leader-mode cluster, up. The caller stops it (``down``) however it ends."""
    cluster = LocalCluster.create(directory, nodes=NODES, fsync=fsync, engine="sqlite", mode="leader")
    cluster.up()
    return cluster


def leader_view(urls: dict[str, str]) -> LeaderView | None:
    """Who leads each partition, as the nodes that answer say; None until every partition has a leader."""
    claims: dict[int, tuple[int, str]] = {}
    partition_map: PartitionMap | None = None
    for node_id, url in sorted(urls.items()):
        doc = cluster_view(url)
        if doc is None:
            continue
        partition_map = partition_map or PartitionMap.from_json(doc["partition_map"])
        for entry in doc.get("leadership", ()):
            if entry.get("role") == "leader":
                partition, term = entry["partition"], entry["term"]
                if partition not in claims or claims[partition][0] < term:
                    claims[partition] = (term, node_id)
    if partition_map is None or len(claims) < partition_map.partition_count:
        return None
    return LeaderView(partition_map, {p: node for p, (_, node) in claims.items()}, urls)


def wait_for_leaders(urls: dict[str, str], timeout_s: float = LEADER_WAIT_S) -> LeaderView:
    deadline = time.monotonic() + timeout_s
    while True:
        view = leader_view(urls)
        if view is not None:
            return view
        if time.monotonic() > deadline:
            raise BenchError(f"the partitions did not all have a leader within {timeout_s:g} s")
        time.sleep(POLL_S)


def peer_traffic(url: str) -> dict[str, int]:
    """A node's peer messages sent since it started, by kind (``kvstore_peer_messages_sent_total``), and under
    ``BATCHES`` the POST /peer requests that carried them."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"cannot read {url}/metrics: {exc}") from exc
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == MESSAGES_METRIC:
                counts[sample.labels["kind"]] = int(sample.value)
            elif sample.name == BATCHES_METRIC:
                counts[BATCHES] = int(sample.value)
    return counts


def cluster_peer_traffic(urls: dict[str, str]) -> dict[str, int]:
    """Every node's ``peer_traffic``, summed by kind."""
    total: dict[str, int] = {}
    for url in urls.values():
        for kind, count in peer_traffic(url).items():
            total[kind] = total.get(kind, 0) + count
    return total


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: count - before.get(kind, 0) for kind, count in sorted(after.items())}
