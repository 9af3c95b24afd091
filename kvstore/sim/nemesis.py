"""CrashNemesis: crashes one random node at a time, at seeded times, and restarts it after a seeded downtime."""

from __future__ import annotations

import random
from collections.abc import Callable

from kvstore.sim.cluster import SimCluster


class CrashNemesis:
    def __init__(
        self,
        cluster: SimCluster,
        rng: random.Random,
        stop: Callable[[], bool],
        gap_ms: tuple[int, int] = (100, 600),
        downtime_ms: tuple[int, int] = (20, 300),
    ) -> None:
        self._cluster = cluster
        self._rng = rng
        self._stop = stop
        self._gap_ms = gap_ms
        self._downtime_ms = downtime_ms
        self.crashes = 0

    def start(self) -> None:
        self._cluster.schedule(self._cluster.now_ms + self._rng.randint(*self._gap_ms), self._crash_one)

    def _crash_one(self) -> None:
        if self._stop():
            return
        node_id = self._rng.choice([n for n in self._cluster.node_ids() if self._cluster.is_up(n)])
        self._cluster.crash(node_id)
        self.crashes += 1
        restart_at_ms = self._cluster.now_ms + self._rng.randint(*self._downtime_ms)
        self._cluster.schedule(restart_at_ms, lambda: self._restart(node_id))

    def _restart(self, node_id: str) -> None:
        # Someone else (the end of the run) may have restarted it already.
        if not self._cluster.is_up(node_id):
            self._cluster.restart(node_id)
        self.start()
