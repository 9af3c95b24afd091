"""The simulation's trace: a running sha256 over every event, plus the last few events for debugging.

Each event is a tuple of plain values and registered messages, hashed through its codec encoding, so
the hash is the same in every process (no ``hash()`` of a str, no set order) and on every machine.
msgpack values are self-delimiting, so hashing the encodings one after another is unambiguous.
"""

from __future__ import annotations

import hashlib
from collections import deque

from kvstore.codec import encode

TraceEvent = tuple[object, ...]


class Trace:
    def __init__(self, keep_last: int = 200) -> None:
        self._hash = hashlib.sha256()
        self._last: deque[TraceEvent] = deque(maxlen=keep_last)
        # Bound once: the simulator records an event or more for every event it runs.
        self._update = self._hash.update
        self._keep = self._last.append
        self.count = 0

    def record(self, event: TraceEvent) -> None:
        self._update(encode(event))
        self._keep(event)
        self.count += 1

    def hash_hex(self) -> str:
        return self._hash.hexdigest()

    def last(self) -> list[TraceEvent]:
        """The most recent events, oldest first."""
        return list(self._last)
