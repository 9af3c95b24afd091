"""The node clock: wall-clock milliseconds plus the fault policy's skew.

Wall-clock time, not ``loop.time()``: TTL deadlines are persisted as absolute node-clock instants and
must mean the same after a restart.
"""

from __future__ import annotations

import time

from kvstore.server.faults import FaultSwitch


class NodeClock:
    def __init__(self, node_id: str, faults: FaultSwitch) -> None:
        self._node_id = node_id
        self._faults = faults

    @staticmethod
    def true_now_ms() -> int:
        return int(time.time() * 1000)

    def now_ms(self) -> int:
        true_ms = self.true_now_ms()
        return true_ms + self._faults.policy.clock_offset_ms(self._node_id, true_ms)
