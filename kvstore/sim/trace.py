"""The simulation's trace: a running sha256 over every event, plus the last few events for debugging.

Each event is a tuple of plain values and registered messages, hashed through its codec encoding, so
the hash is the same in every process (no ``hash()`` of a str, no set order) and on every machine.

Events are hashed in batches of ``BATCH`` (the last batch may be shorter): the hash is sha256 over the
codec encoding of each batch, a msgpack array of its events. msgpack values are self-delimiting and the
batches split the sequence at fixed counts, so two traces hash alike exactly when they hold the same
events in the same order, whenever ``hash_hex`` is asked (it hashes the open batch on a copy of the
running hash). One encoding per batch rather than one per event: the simulator records an event or
more for every event it runs, and the per-call cost of encoding each alone was a tenth of a run.
"""

from __future__ import annotations

import hashlib
from collections import deque

from kvstore.codec import encode
from kvstore.sim.events import SimulationError

TraceEvent = tuple[object, ...]

BATCH = 256


class Trace:
    def __init__(self, keep_last: int = 200) -> None:
        self._hash = hashlib.sha256()
        self._keep_last = keep_last
        # Events wait in the open batch until it is hashed, then join the tail kept for ``last()``.
        self._batch: list[TraceEvent] = []
        self._tail: deque[TraceEvent] = deque(maxlen=keep_last)
        self._hashed = 0

    @property
    def count(self) -> int:
        return self._hashed + len(self._batch)

    def record(self, event: TraceEvent) -> None:
        batch = self._batch
        batch.append(event)
        if len(batch) >= BATCH:
            self._hash.update(_encoded(batch))
            self._hashed += len(batch)
            self._tail.extend(batch)
            self._batch = []

    def hash_hex(self) -> str:
        running = self._hash.copy()
        if self._batch:
            running.update(_encoded(self._batch))
        return running.hexdigest()

    def last(self) -> list[TraceEvent]:
        """The most recent events, oldest first."""
        if self._keep_last <= 0:
            return []
        return [*self._tail, *self._batch][-self._keep_last:]


def _encoded(batch: list[TraceEvent]) -> bytes:
    try:
        return encode(batch)
    except TypeError:
        for event in batch:
            try:
                encode(event)
            except TypeError as exc:
                raise SimulationError(f"trace event cannot be encoded: {exc}: {event!r}"[:1000]) from exc
        raise
