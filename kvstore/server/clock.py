"""The node clock: wall-clock milliseconds plus the fault policy's skew.

Wall-clock time, not ``loop.time()``: TTL deadlines are persisted as absolute node-clock instants and
must mean the same after a restart.

Whatever skew a policy asks for, the clock stays in ``[0, MAX_NODE_CLOCK_MS]``, where every TTL
deadline (now plus at most ``MAX_TTL_MS``) is still a signed 64-bit number: storage and the wire hold
deadlines as such, and one past it would stop the node. A clamped clock is logged once per episode.
"""

from __future__ import annotations

import logging
import time

from kvstore.codec import INT64_MAX
from kvstore.server.faults import FaultSwitch
from kvstore.validation import MAX_TTL_MS

log = logging.getLogger(__name__)

MAX_NODE_CLOCK_MS = INT64_MAX - MAX_TTL_MS


class NodeClock:
    def __init__(self, node_id: str, faults: FaultSwitch) -> None:
        self._node_id = node_id
        self._faults = faults
        self._clamped = False

    @staticmethod
    def true_now_ms() -> int:
        return int(time.time() * 1000)

    def now_ms(self) -> int:
        true_ms = self.true_now_ms()
        now_ms = true_ms + self._faults.policy.clock_offset_ms(self._node_id, true_ms)
        if 0 <= now_ms <= MAX_NODE_CLOCK_MS:
            if self._clamped:
                self._clamped = False
                log.warning("node %s clock is back in range", self._node_id)
            return now_ms
        if not self._clamped:
            self._clamped = True
            log.warning(
                "node %s clock skewed to %d ms, outside [0, %d]; clamped", self._node_id, now_ms, MAX_NODE_CLOCK_MS
            )
        return min(max(now_ms, 0), MAX_NODE_CLOCK_MS)
