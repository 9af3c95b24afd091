"""How the change feed's consumer dates a caught-up frame: never fresher than the node's own stamp says."""

from __future__ import annotations

import time

import pytest

from kvstore import change_feed


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer's monotonic clock reads 1000 s and its wall clock 1,700,000,000 s.
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)


def frame(round_ms: float, as_of_ms: int | None) -> dict[str, object]:
    doc: dict[str, object] = {"caught_up": True, "round_ms": round_ms, "cursor": ""}
    if as_of_ms is not None:
        doc["as_of_ms"] = as_of_ms
    return doc


@pytest.mark.usefixtures("clocks")
def test_a_frame_that_waited_in_buffers_is_dated_by_the_nodes_stamp() -> None:
    # The round took 2 ms but began 3 s ago by the node's clock (the frame sat in buffers): 3 s stale, not 2 ms.
    assert change_feed._as_of_s(frame(2.0, 1_700_000_000_000 - 3000)) == pytest.approx(997.0)


@pytest.mark.usefixtures("clocks")
def test_a_node_clock_ahead_of_ours_cannot_make_the_frame_fresher_than_its_arrival() -> None:
    # Stamped 5 s in our future: the arrival minus the round's length (10 ms) is the older reading.
    assert change_feed._as_of_s(frame(10.0, 1_700_000_000_000 + 5000)) == pytest.approx(999.99)


@pytest.mark.usefixtures("clocks")
def test_a_frame_without_a_stamp_is_dated_by_its_arrival() -> None:
    assert change_feed._as_of_s(frame(250.0, None)) == pytest.approx(999.75)
