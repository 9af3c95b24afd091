"""kvstore/raft_batching.py on its own: the node tick that stands for every leader's heartbeat timer, and the
outbox that packs a step's replica messages into envelopes."""

from __future__ import annotations

import pytest

from kvstore.effects import Send, SetTimer
from kvstore.messages import NODE_PARTITION, Message, RaftBatch
from kvstore.raft_batching import RAFT_TICK_TIMER, HeartbeatTicker, RaftOutbox, batch_items
from replication.raft_messages import AppendEntries, Heartbeat
from replication.replica import LogEntry

INTERVAL_MS = 100


def test_the_first_heartbeat_asked_for_sets_the_tick_and_later_ones_share_it() -> None:
    ticker = HeartbeatTicker(INTERVAL_MS)
    assert ticker.start(0, 100) == [SetTimer(RAFT_TICK_TIMER, 100)]
    # A leader elected since asks for a heartbeat after the tick: it waits for the tick, no timer of its own.
    assert ticker.start(1, 150) == []
    # One asked for before the tick moves the tick earlier (a heartbeat is never late).
    assert ticker.start(2, 90) == [SetTimer(RAFT_TICK_TIMER, 90)]


def test_a_tick_fires_every_heartbeat_due_before_the_next_tick_in_partition_order() -> None:
    ticker = HeartbeatTicker(INTERVAL_MS)
    ticker.start(3, 100)
    ticker.start(1, 150)  # due before the tick after this one (at 200): fired now, early rather than late
    ticker.start(2, 200)  # due at the next tick: waits for it
    ticker.start(4, 120)
    ticker.stop(4)  # stopped leading
    assert ticker.fire(100) == [1, 3]
    # The fired leaders ask again (as RaftReplica does on its heartbeat); the first request sets the tick.
    assert ticker.start(3, 200) == [SetTimer(RAFT_TICK_TIMER, 200)]
    assert ticker.start(1, 200) == []
    assert ticker.rearm() == []
    assert ticker.fire(200) == [1, 2, 3]


def test_after_a_tick_the_timer_is_set_for_what_is_still_wanted_and_not_at_all_when_nothing_is() -> None:
    ticker = HeartbeatTicker(INTERVAL_MS)
    ticker.start(0, 100)
    ticker.start(1, 250)
    assert ticker.fire(100) == [0]
    assert ticker.rearm() == [SetTimer(RAFT_TICK_TIMER, 250)]
    ticker.stop(1)
    assert ticker.fire(250) == []
    assert ticker.rearm() == []
    with pytest.raises(ValueError):
        HeartbeatTicker(0)


def items_by_envelope(sends: list[Send]) -> list[tuple[str, bool, list[int]]]:
    out = []
    for send in sends:
        assert send.msg.src == "n1" and send.msg.partition == NODE_PARTITION
        assert isinstance(send.msg.body, RaftBatch)
        out.append((send.msg.dst, send.durable, [p for p, _ in send.msg.body.items]))
    return out


def test_a_step_leaves_one_envelope_per_destination_and_durability_items_in_sending_order() -> None:
    outbox = RaftOutbox("n1")
    beat = Heartbeat(1, 0, 0)
    outbox.add("n2", False, 3, beat)
    outbox.add("n3", True, 1, beat)
    outbox.add("n2", True, 2, beat)
    outbox.add("n2", False, 0, beat)
    outbox.add("n3", True, 5, beat)
    assert items_by_envelope(outbox.flush()) == [("n2", False, [3, 0]), ("n3", True, [1, 5]), ("n2", True, [2])]
    assert outbox.flush() == []


def test_an_envelope_past_its_item_or_byte_bound_continues_in_another() -> None:
    outbox = RaftOutbox("n1", max_items=2)
    for partition in range(5):
        outbox.add("n2", False, partition, Heartbeat(1, 0, 0))
    assert items_by_envelope(outbox.flush()) == [("n2", False, [0, 1]), ("n2", False, [2, 3]), ("n2", False, [4])]
    outbox = RaftOutbox("n1", max_bytes=1000)
    big = AppendEntries(1, 0, 0, (LogEntry(1, 1, b"\x01" + b"x" * 600),), 0)
    for partition in range(3):
        outbox.add("n2", False, partition, big)
    outbox.add("n2", False, 3, Heartbeat(1, 0, 0))
    # One append alone may pass the budget: each envelope then holds one; the small message joins the last.
    assert items_by_envelope(outbox.flush()) == [("n2", False, [0]), ("n2", False, [1]), ("n2", False, [2, 3])]


def test_a_received_envelope_yields_its_well_formed_items_for_held_partitions_only() -> None:
    beat = Heartbeat(1, 0, 0)
    batch = RaftBatch(((0, beat), (1,), ("2", beat), (False, beat), 3, (4, beat), (5, beat)))  # type: ignore[arg-type]
    held = {0, 1, 2, 3, 4}
    assert batch_items(Message("n2", "n1", NODE_PARTITION, batch), batch, held) == [(0, beat), (4, beat)]
    assert batch_items(Message("n2", "n1", 0, batch), batch, held) == []
