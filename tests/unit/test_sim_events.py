from __future__ import annotations

from typing import Any

import pytest

from kvstore.sim.events import EventQueue, SimulationError


def _noop(a: Any, b: Any) -> None:
    pass


def test_events_run_in_time_order_and_ties_in_push_order() -> None:
    queue = EventQueue(max_entries=10)
    queue.push(5, _noop, "n1", "late")
    queue.push(2, _noop, "n2", "first at 2")
    queue.push(2, _noop, "n1", "second at 2")
    queue.push(0, _noop, "n3", "now")
    popped = []
    while len(queue):
        at_ms = queue.next_at_ms()
        handler, a, b = queue.pop()
        assert handler is _noop
        popped.append((at_ms, a, b, queue.now_ms))
    assert popped == [
        (0, "n3", "now", 0),
        (2, "n2", "first at 2", 2),
        (2, "n1", "second at 2", 2),
        (5, "n1", "late", 5),
    ]
    assert queue.next_at_ms() is None


def test_ties_never_compare_handlers_or_arguments() -> None:
    # Handlers and arguments that cannot be ordered: a comparison reaching them would raise TypeError.
    queue = EventQueue(max_entries=10)
    first, second = object(), object()
    queue.push(1, lambda a, b: None, first)
    queue.push(1, lambda a, b: None, second)
    assert queue.pop()[1] is first
    assert queue.pop()[1] is second


def test_the_past_is_closed_and_the_heap_is_bounded() -> None:
    queue = EventQueue(max_entries=2)
    queue.advance_to(10)
    with pytest.raises(SimulationError, match="in the past"):
        queue.push(9, _noop, "x")
    with pytest.raises(SimulationError, match="cannot go back"):
        queue.advance_to(3)
    queue.push(10, _noop, "a")
    queue.push(11, _noop, "b")
    with pytest.raises(SimulationError, match="over its bound of 2"):
        queue.push(12, _noop, "c")
