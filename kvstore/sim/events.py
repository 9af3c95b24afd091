"""The simulation's virtual clock and event heap.

Time is an integer number of milliseconds that jumps from one event to the next. Heap entries are
``(at_ms, seq, target, event)``; ``seq`` grows by one per push, so events due at the same millisecond
run in the order they were scheduled and the comparison never reaches the payload (docs/design.md, determinism).
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Generic, TypeVar

E = TypeVar("E")


class SimulationError(AssertionError):
    """A broken invariant of the simulation itself or of the code it drives."""


class EventQueue(Generic[E]):
    def __init__(self, max_entries: int) -> None:
        self._heap: list[tuple[int, int, str, E]] = []
        self._seq = 0
        self._max_entries = max_entries
        self.now_ms = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at_ms: int, target: str, event: E) -> None:
        # The simulator pushes once or twice per event it runs: locals, not attribute lookups.
        heap = self._heap
        if at_ms < self.now_ms:
            raise SimulationError(f"event scheduled in the past: at {at_ms} ms, now {self.now_ms} ms")
        if len(heap) >= self._max_entries:
            raise SimulationError(f"event heap holds {len(heap)} entries, over its bound of {self._max_entries}")
        seq = self._seq = self._seq + 1
        heappush(heap, (at_ms, seq, target, event))

    def next_at_ms(self) -> int | None:
        heap = self._heap
        return heap[0][0] if heap else None

    def pop(self) -> tuple[str, E]:
        """Remove the earliest entry and move the clock to its time."""
        at_ms, _, target, event = heappop(self._heap)
        self.now_ms = at_ms
        return target, event

    def advance_to(self, at_ms: int) -> None:
        """Move the clock forward with no event (the run stops between events)."""
        if at_ms < self.now_ms:
            raise SimulationError(f"the clock cannot go back from {self.now_ms} ms to {at_ms} ms")
        self.now_ms = at_ms
