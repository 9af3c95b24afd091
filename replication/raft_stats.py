"""Counters a node's Raft replicas share: elections, leadership changes and commit latency, sans-IO.

A node makes one ``RaftStats`` and hands it to every ``RaftReplica`` it builds; each replica wraps it in a
``ReplicaStats`` of its own, which also remembers when this leader appended each client write, so the commit
latency (leader: from append to the commit index passing it) is measured per replica. Plain integers only:
a driver turns them into metrics when it is asked (``kvstore/server/metrics.py``), so a replica's step pays
an addition or two. Times are the replica's ``now_ms``, so the simulator measures in virtual time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque

# Upper bounds of the commit latency buckets, in ms (the last slot of ``commit_latency_counts`` is +Inf).
COMMIT_LATENCY_BUCKETS_MS: tuple[int, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class RaftStats:
    """What every Raft replica of one node did since the node started."""

    def __init__(self) -> None:
        self.pre_votes_started = 0
        self.elections_started = 0
        self.became_leader = 0
        self.stopped_leading = 0
        self.commit_latency_counts = [0] * (len(COMMIT_LATENCY_BUCKETS_MS) + 1)
        self.commit_latency_sum_ms = 0

    def commit_latency(self, latency_ms: int) -> None:
        self.commit_latency_counts[bisect_left(COMMIT_LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.commit_latency_sum_ms += latency_ms


class ReplicaStats:
    """One replica's view of its node's ``RaftStats``, with the append times of its uncommitted writes.

    Bounded: only client writes are timed (the leader holds at most ``max_pending_proposals`` of them),
    and stepping down forgets them (their outcome is unknown, so they have no commit latency here)."""

    def __init__(self, shared: RaftStats) -> None:
        self.shared = shared
        self._appended: deque[tuple[int, int]] = deque()  # (index, now_ms at append), index ascending

    def campaign(self, pre_vote: bool) -> None:
        if pre_vote:
            self.shared.pre_votes_started += 1
        else:
            self.shared.elections_started += 1

    def leading(self) -> None:
        self.shared.became_leader += 1

    def not_leading(self) -> None:
        self.shared.stopped_leading += 1
        self._appended.clear()

    def appended(self, index: int, now_ms: int) -> None:
        self._appended.append((index, now_ms))

    def committed(self, commit_index: int, now_ms: int) -> None:
        appended = self._appended
        while appended and appended[0][0] <= commit_index:
            _, at_ms = appended.popleft()
            self.shared.commit_latency(max(0, now_ms - at_ms))
