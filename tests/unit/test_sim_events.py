from __future__ import annotations

import pytest

from kvstore.sim.events import EventQueue, SimulationError


def test_events_run_in_time_order_and_ties_in_push_order() -> None:
    queue: EventQueue[str] = EventQueue(max_entries=10)
    queue.push(5, "n1", "late")
    queue.push(2, "n2", "first at 2")
    queue.push(2, "n1", "second at 2")
    queue.push(0, "n3", "now")
    popped = []
    while len(queue):
        popped.append((queue.next_at_ms(), *queue.pop(), queue.now_ms))
    assert popped == [
        (0, "n3", "now", 0),
        (2, "n2", "first at 2", 2),
        (2, "n1", "second at 2", 2),
        (5, "n1", "late", 5),
    ]
    assert queue.next_at_ms() is None


def test_ties_never_compare_payloads() -> None:
    # Payloads that cannot be ordered: a comparison reaching them would raise TypeError.
    queue: EventQueue[object] = EventQueue(max_entries=10)
    first, second = object(), object()
    queue.push(1, "n1", first)
    queue.push(1, "n1", second)
    assert queue.pop()[1] is first
    assert queue.pop()[1] is second


def test_the_past_is_closed_and_the_heap_is_bounded() -> None:
    queue: EventQueue[str] = EventQueue(max_entries=2)
    queue.advance_to(10)
    with pytest.raises(SimulationError, match="in the past"):
        queue.push(9, "n1", "x")
    with pytest.raises(SimulationError, match="cannot go back"):
        queue.advance_to(3)
    queue.push(10, "n1", "a")
    queue.push(11, "n1", "b")
    with pytest.raises(SimulationError, match="over its bound of 2"):
        queue.push(12, "n1", "c")
