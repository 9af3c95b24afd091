"""The simulation's virtual clock and event heap.

Time is an integer number of milliseconds that jumps from one event to the next. Heap entries are
``(at_ms, seq, handler, a, b)``: the event runs as ``handler(a, b)``. ``seq`` grows by one per push, so
events due at the same millisecond run in the order they were scheduled and the comparison never
reaches the handler or its arguments (docs/design.md, determinism).

A handler and its two arguments, rather than an event object: the simulator runs tens of thousands of
events a second, and a frozen dataclass per event cost a third of a microsecond to build, plus a chain of
``isinstance`` tests to dispatch it. The simulator's loop pops ``heap`` itself (kvstore/sim/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

Handler = Callable[[Any, Any], None]
Entry = tuple[int, int, Handler, Any, Any]


class SimulationError(AssertionError):
    """A broken invariant of the simulation itself or of the code it drives."""


class EventQueue:
    def __init__(self, max_entries: int) -> None:
        self.heap: list[Entry] = []
        self._seq = 0
        self._max_entries = max_entries
        self.now_ms = 0

    def __len__(self) -> int:
        return len(self.heap)

    def push(self, at_ms: int, handler: Handler, a: Any = None, b: Any = None) -> None:
        """Run ``handler(a, b)`` at ``at_ms``, after every event already due then."""
        heap = self.heap
        if at_ms < self.now_ms:
            raise SimulationError(f"event scheduled in the past: at {at_ms} ms, now {self.now_ms} ms")
        if len(heap) >= self._max_entries:
            raise SimulationError(f"event heap holds {len(heap)} entries, over its bound of {self._max_entries}")
        seq = self._seq = self._seq + 1
        heappush(heap, (at_ms, seq, handler, a, b))

    def next_at_ms(self) -> int | None:
        heap = self.heap
        return heap[0][0] if heap else None

    def pop(self) -> tuple[Handler, Any, Any]:
        """Remove the earliest entry and move the clock to its time."""
        at_ms, _, handler, a, b = heappop(self.heap)
        self.now_ms = at_ms
        return handler, a, b

    def advance_to(self, at_ms: int) -> None:
        """Move the clock forward with no event (the run stops between events)."""
        if at_ms < self.now_ms:
            raise SimulationError(f"the clock cannot go back from {self.now_ms} ms to {at_ms} ms")
        self.now_ms = at_ms
