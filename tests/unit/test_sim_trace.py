from __future__ import annotations

import hashlib

from kvstore.codec import encode
from kvstore.messages import GetOp, Message
from kvstore.sim.trace import Trace


def test_hash_is_sha256_over_the_encoded_events() -> None:
    events = [("submit", 0, "n1", 1, GetOp("k")), ("deliver", 3, "n2", 3, Message("n1", "n2", 4, GetOp("k")))]
    trace = Trace()
    for event in events:
        trace.record(event)
    expected = hashlib.sha256(b"".join(encode(e) for e in events)).hexdigest()
    assert trace.hash_hex() == expected
    assert trace.count == 2


def test_order_matters_and_only_the_tail_is_kept() -> None:
    forward, backward = Trace(keep_last=3), Trace(keep_last=3)
    for i in range(10):
        forward.record(("timer", i, "n1", i, "t"))
        backward.record(("timer", 9 - i, "n1", 9 - i, "t"))
    assert forward.hash_hex() != backward.hash_hex()
    assert forward.last() == [("timer", i, "n1", i, "t") for i in (7, 8, 9)]
    assert forward.count == 10
