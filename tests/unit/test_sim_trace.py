from __future__ import annotations

import hashlib

import pytest

from kvstore.codec import encode
from kvstore.messages import GetOp, Message
from kvstore.sim.events import SimulationError
from kvstore.sim.trace import BATCH, Trace


def test_hash_is_sha256_over_the_encoded_batches_of_events() -> None:
    events = [("submit", 0, "n1", 1, GetOp("k")), ("deliver", 3, "n2", 3, Message("n1", "n2", 4, GetOp("k")))]
    trace = Trace()
    for event in events:
        trace.record(event)
    assert trace.hash_hex() == hashlib.sha256(encode(events)).hexdigest()
    assert trace.count == 2


def test_batches_split_at_fixed_counts_whenever_the_hash_is_asked() -> None:
    events = [("timer", i, "n1", i, f"t{i}") for i in range(2 * BATCH + 7)]
    asked, quiet = Trace(), Trace()
    for event in events:
        asked.record(event)
        asked.hash_hex()  # asking hashes the open batch on a copy: it moves no boundary
        quiet.record(event)
    batches = [events[:BATCH], events[BATCH:2 * BATCH], events[2 * BATCH:]]
    expected = hashlib.sha256(b"".join(encode(b) for b in batches)).hexdigest()
    assert asked.hash_hex() == quiet.hash_hex() == expected
    assert asked.count == len(events)


def test_order_matters_and_only_the_tail_is_kept() -> None:
    for total in (10, BATCH + 10):
        forward, backward = Trace(keep_last=3), Trace(keep_last=3)
        for i in range(total):
            forward.record(("timer", i, "n1", i, "t"))
            backward.record(("timer", total - 1 - i, "n1", total - 1 - i, "t"))
        assert forward.hash_hex() != backward.hash_hex()
        assert forward.last() == [("timer", i, "n1", i, "t") for i in range(total - 3, total)]
        assert forward.count == total


def test_an_event_that_cannot_be_encoded_is_named() -> None:
    trace = Trace()
    trace.record(("submit", 0, "n1", 1, GetOp("k")))
    trace.record(("bad", object()))
    with pytest.raises(SimulationError, match=r"trace event cannot be encoded.*'bad'"):
        trace.hash_hex()
