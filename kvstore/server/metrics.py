"""Per-node Prometheus metrics.

Request counts and latency histograms are plain integers bumped on the hot path (a dict update and a
bisect, well under a microsecond) and turned into Prometheus families only when ``/metrics`` is
scraped, through a collector registered on a per-node ``CollectorRegistry``. Gauges (in-flight
requests, held effects, peer queues, storage LSNs, key count, open connections) are read from their
owners at scrape time, so they cost nothing between scrapes. The HTTP edge (``http_server.py``) counts
what never reaches the router: malformed requests, refused connections and request heads that timed out.
The peer transport counts the messages it sends, by kind, and the batches they go in. In leader mode the
node's ``RaftStats`` (``replication/raft_stats.py``) gives elections, leadership changes and commit latency,
and the replicas give, at scrape time, the partitions led here and each follower's lag. In leaderless mode the
node's ``LeaderlessStats`` and ``HandoffStats`` give hints held (count and bytes), delivered and refused because
the store was full, read repairs, and anti-entropy rounds, keys repaired and bytes exchanged; and siblings per key
is a histogram of how many values each ``GET /kv/{key}`` answered (0: absent), observed by the route: a histogram
rather than a gauge of the max, so that a rare explosion and the usual case both show.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvstore.handoff import MoveStats
from replication.hinted_handoff import HandoffStats
from replication.leaderless import LeaderlessStats
from replication.raft_stats import COMMIT_LATENCY_BUCKETS_MS, RaftStats

# Upper bounds of the latency buckets, in seconds.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0002,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Upper bounds of the siblings-per-read buckets (a key's policy caps siblings at max_siblings, 100 by default).
SIBLING_BUCKETS: tuple[int, ...] = (0, 1, 2, 3, 5, 10, 20, 50, 100)


class _Latency:
    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        # One slot per bucket plus the +Inf overflow; cumulated at scrape time.
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0


@dataclass(frozen=True)
class NodeGauges:
    """Where the scrape-time gauges are read from."""

    inflight: Callable[[], int]
    held_effects: Callable[[], int]
    peer_queues: Callable[[], Mapping[str, int]]
    peer_up: Callable[[], Mapping[str, bool]]
    written_lsn: Callable[[], int]
    synced_lsn: Callable[[], int]
    key_count: Callable[[], int]
    # Open HTTP connections by admission ("client", "reserved"); none without an HTTP edge.
    open_connections: Callable[[], Mapping[str, int]] = dict
    # Per partition stored here: (records, bytes of keys and values).
    partition_stats: Callable[[], Mapping[int, tuple[int, int]]] = dict
    # Outgoing partition moves: how many run now, and what they did since the node started.
    moves_in_progress: Callable[[], int] = lambda: 0
    move_stats: Callable[[], MoveStats] = MoveStats
    # Range mode: the splits and merges this node made since it started.
    range_changes: Callable[[], tuple[int, int]] = lambda: (0, 0)
    # Peer messages sent, by kind, and the POST /peer batches that carried them.
    peer_messages_sent: Callable[[], Mapping[str, int]] = dict
    peer_batches_sent: Callable[[], int] = lambda: 0
    # Leader mode: the Raft messages carried in those envelopes, by kind.
    raft_messages_sent: Callable[[], Mapping[str, int]] = dict
    # Leader mode only (None otherwise): the Raft counters, the partitions led here, and per follower node the
    # largest lag (leader's last index - follower's match) over the partitions this node leads.
    raft_stats: Callable[[], RaftStats | None] = lambda: None
    leaders_held: Callable[[], int] = lambda: 0
    follower_lag: Callable[[], Mapping[str, int]] = dict
    # Leaderless mode only (None otherwise): the replicas' counters and the node's hinted handoff counters.
    leaderless_stats: Callable[[], LeaderlessStats | None] = lambda: None
    handoff_stats: Callable[[], HandoffStats | None] = lambda: None


class NodeMetrics(Collector):
    def __init__(self, node_id: str, gauges: NodeGauges) -> None:
        self.node_id = node_id
        self._gauges = gauges
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Latency] = {}
        self._errors: dict[str, int] = {}
        self._malformed: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._header_timeouts = 0
        # One slot per sibling bucket plus the overflow; cumulated at scrape time.
        self._siblings = [0] * (len(SIBLING_BUCKETS) + 1)
        self._siblings_sum = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _Latency()
        latency.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        latency.sum_s += seconds

    def error(self, code: str) -> None:
        self._errors[code] = self._errors.get(code, 0) + 1

    def malformed(self, kind: str) -> None:
        self._malformed[kind] = self._malformed.get(kind, 0) + 1

    def refused(self, reason: str) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + 1

    def header_timeout(self) -> None:
        self._header_timeouts += 1

    def read_siblings(self, count: int) -> None:
        """A leaderless read answered ``count`` values."""
        self._siblings[bisect_left(SIBLING_BUCKETS, count)] += 1
        self._siblings_sum += count

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "kvstore_http_requests", "HTTP requests served, by route and status", labels=["route", "status"]
        )
        for (route, status), count in sorted(self._requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests

        latency = HistogramMetricFamily(
            "kvstore_http_request_duration_seconds", "Time to serve an HTTP request, by route", labels=["route"]
        )
        for route, stats in sorted(self._latency.items()):
            latency.add_metric([route], _buckets([repr(b) for b in LATENCY_BUCKETS_S], stats.counts), stats.sum_s)
        yield latency

        errors = CounterMetricFamily("kvstore_errors", "Error responses, by error code", labels=["code"])
        for code, count in sorted(self._errors.items()):
            errors.add_metric([code], count)
        yield errors

        malformed = CounterMetricFamily(
            "kvstore_http_malformed_requests", "Requests the HTTP parser rejected, by kind", labels=["kind"]
        )
        for kind, count in sorted(self._malformed.items()):
            malformed.add_metric([kind], count)
        yield malformed
        refused = CounterMetricFamily(
            "kvstore_http_connections_refused",
            "Connections closed at accept (connection_limit, fd_limit) and requests answered 503 on a reserved "
            "connection (client_limit)",
            labels=["reason"],
        )
        for reason, count in sorted(self._refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "kvstore_http_header_timeouts",
            "Connections closed because a request head was too slow",
            self._header_timeouts,
        )

        g = self._gauges
        yield GaugeMetricFamily("kvstore_inflight_requests", "Client requests waiting for an answer", g.inflight())
        yield GaugeMetricFamily("kvstore_held_effects", "Replies and sends waiting for an fsync", g.held_effects())
        queues = GaugeMetricFamily("kvstore_peer_queue_depth", "Messages queued for a peer", labels=["peer"])
        for peer, depth in sorted(g.peer_queues().items()):
            queues.add_metric([peer], depth)
        yield queues
        up = GaugeMetricFamily("kvstore_peer_up", "1 if the last send to the peer succeeded", labels=["peer"])
        for peer, is_up in sorted(g.peer_up().items()):
            up.add_metric([peer], 1 if is_up else 0)
        yield up
        yield GaugeMetricFamily("kvstore_storage_written_lsn", "Highest LSN written", g.written_lsn())
        yield GaugeMetricFamily("kvstore_storage_synced_lsn", "Highest LSN made durable", g.synced_lsn())
        yield GaugeMetricFamily("kvstore_keys", "Live keys stored on this node", g.key_count())
        connections = GaugeMetricFamily(
            "kvstore_http_connections", "Open HTTP connections, by admission", labels=["kind"]
        )
        for kind, count in sorted(g.open_connections().items()):
            connections.add_metric([kind], count)
        yield connections
        partitions = g.partition_stats()
        records = GaugeMetricFamily(
            "kvstore_partition_records", "Records stored here, by partition (tombstones included)", labels=["partition"]
        )
        size = GaugeMetricFamily(
            "kvstore_partition_bytes", "Bytes of keys and values stored here, by partition", labels=["partition"]
        )
        for partition, (count, size_bytes) in sorted(partitions.items()):
            records.add_metric([str(partition)], count)
            size.add_metric([str(partition)], size_bytes)
        yield records
        yield size
        moves = g.move_stats()
        yield GaugeMetricFamily(
            "kvstore_moves_in_progress", "Partition moves this node is sending now", g.moves_in_progress()
        )
        outcomes = CounterMetricFamily(
            "kvstore_moves",
            "Partition moves this node sent, by outcome (started, completed, abandoned)",
            labels=["outcome"],
        )
        for outcome, count in (
            ("started", moves.started),
            ("completed", moves.completed),
            ("abandoned", moves.abandoned),
        ):
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield CounterMetricFamily(
            "kvstore_move_bytes", "Keys and values this node streamed to move partitions", moves.bytes_sent
        )
        yield CounterMetricFamily(
            "kvstore_move_seconds",
            "Time from start to hand-over, summed over completed moves",
            moves.completed_ms / 1000,
        )
        splits, merges = g.range_changes()
        changes = CounterMetricFamily(
            "kvstore_range_changes", "Range splits and merges this node made (range mode)", labels=["kind"]
        )
        changes.add_metric(["split"], splits)
        changes.add_metric(["merge"], merges)
        yield changes
        sent = CounterMetricFamily(
            "kvstore_peer_messages_sent",
            "Messages sent to other nodes, by kind (before fault injection)",
            labels=["kind"],
        )
        for kind, count in sorted(g.peer_messages_sent().items()):
            sent.add_metric([kind], count)
        yield sent
        carried = CounterMetricFamily(
            "kvstore_raft_messages_sent",
            "Raft messages sent to other nodes inside RaftBatch envelopes, by kind (leader mode)",
            labels=["kind"],
        )
        for kind, count in sorted(g.raft_messages_sent().items()):
            carried.add_metric([kind], count)
        yield carried
        yield CounterMetricFamily(
            "kvstore_peer_batches_sent",
            "POST /peer requests sent (each carries a batch of messages)",
            g.peer_batches_sent(),
        )
        raft = g.raft_stats()
        if raft is not None:
            yield from _raft_families(raft, g.leaders_held(), g.follower_lag())
        leaderless, handoff = g.leaderless_stats(), g.handoff_stats()
        if leaderless is not None and handoff is not None:
            yield from _leaderless_families(leaderless, handoff, self._siblings, self._siblings_sum)


def _buckets(bounds: Sequence[str], counts: Sequence[int]) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets: ``counts`` holds one count per bound and a last one for +Inf."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, "+Inf"), counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


def _leaderless_families(
    stats: LeaderlessStats, handoff: HandoffStats, siblings: list[int], siblings_sum: int
) -> Iterator[Metric]:
    yield GaugeMetricFamily("kvstore_hints_held", "Hinted writes this node holds for other replicas", handoff.held)
    yield GaugeMetricFamily(
        "kvstore_hint_bytes", "Bytes of keys and states this node holds as hints", handoff.held_bytes
    )
    yield CounterMetricFamily(
        "kvstore_hints_delivered", "Hints handed to their target replica and acknowledged", handoff.delivered
    )
    yield CounterMetricFamily(
        "kvstore_hinted_writes_refused_full", "Hinted writes refused because the hint store was full",
        handoff.refused_full,
    )
    yield CounterMetricFamily(
        "kvstore_read_repairs", "Merged states sent to (or stored at) replicas a read found stale", stats.read_repairs
    )
    yield CounterMetricFamily(
        "kvstore_anti_entropy_rounds", "Merkle anti-entropy rounds finished here", stats.ae_rounds
    )
    yield CounterMetricFamily(
        "kvstore_anti_entropy_keys_repaired", "Keys an anti-entropy round changed here", stats.ae_keys_repaired
    )
    exchanged = CounterMetricFamily(
        "kvstore_anti_entropy_bytes", "Bytes anti-entropy rounds exchanged, by direction", labels=["direction"]
    )
    exchanged.add_metric(["sent"], stats.ae_bytes_sent)
    exchanged.add_metric(["received"], stats.ae_bytes_received)
    yield exchanged
    histogram = HistogramMetricFamily(
        "kvstore_read_siblings", "Values a leaderless GET /kv/{key} answered (0: absent; 2 or more: siblings)"
    )
    histogram.add_metric([], _buckets([str(b) for b in SIBLING_BUCKETS], siblings), siblings_sum)
    yield histogram


def _raft_families(raft: RaftStats, leaders_held: int, follower_lag: Mapping[str, int]) -> Iterator[Metric]:
    elections = CounterMetricFamily(
        "kvstore_raft_elections_started",
        "Campaigns started by this node's Raft replicas: pre_vote (asks whether it could win, changes no term) "
        "and vote (a real election in a new term)",
        labels=["kind"],
    )
    elections.add_metric(["pre_vote"], raft.pre_votes_started)
    elections.add_metric(["vote"], raft.elections_started)
    yield elections
    changes = CounterMetricFamily(
        "kvstore_raft_leader_changes",
        "Times a replica on this node became leader of its partition (became) or stopped leading it (stopped)",
        labels=["change"],
    )
    changes.add_metric(["became"], raft.became_leader)
    changes.add_metric(["stopped"], raft.stopped_leading)
    yield changes
    latency = HistogramMetricFamily(
        "kvstore_raft_commit_latency_seconds",
        "Leader: time from appending a client write to its log until the write is committed",
    )
    bounds_s = [repr(b / 1000) for b in COMMIT_LATENCY_BUCKETS_MS]
    latency.add_metric([], _buckets(bounds_s, raft.commit_latency_counts), raft.commit_latency_sum_ms / 1000)
    yield latency
    yield GaugeMetricFamily("kvstore_raft_leaders", "Partitions whose Raft group this node leads now", leaders_held)
    lag = GaugeMetricFamily(
        "kvstore_raft_follower_lag_entries",
        "Per follower node: the largest (leader last index - follower match) over the partitions led here",
        labels=["follower"],
    )
    for follower, entries in sorted(follower_lag.items()):
        lag.add_metric([follower], entries)
    yield lag
