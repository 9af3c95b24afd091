"""Multi-Raft transport (leader mode): one message per pair of nodes for all the Raft groups they share.

A node runs one Raft group member per partition it holds, so 64 partitions would cost 64 heartbeats and 64
replies per peer and interval if every group spoke for itself. As CockroachDB and TiKV do, the node
coalesces them:

- ``HeartbeatTicker``: every leader replica's ``heartbeat`` timer is one node timer (``RAFT_TICK_TIMER``).
  Each tick fires every leader whose heartbeat falls due before the next tick (early rather than late: a
  heartbeat sent sooner than asked is harmless, one sent later could let a follower campaign), so all of a
  node's leaders heartbeat in one step.
- ``RaftOutbox``: every ``SendTo`` the replicas make during one ``Node.step`` is collected and leaves at the
  end of the step as a ``RaftBatch`` envelope per (destination, durable) pair, items in the order the
  replicas sent them. Durable items wait for the sync, non-durable ones do not wait behind them. A receiver
  unpacks an envelope in one step, so its replicas' answers leave as one envelope per destination again:
  heartbeat replies coalesce too. An envelope holds at most ``MAX_BATCH_ITEMS`` items and about
  ``MAX_BATCH_BYTES`` of log entries (one append alone may exceed it): past that the outbox starts another.
- ``batch_items``: what a receiver takes from an envelope. An envelope over the bound, or not sent as node
  traffic, is dropped whole; a malformed item, or one for a partition the node does not hold, is dropped
  alone. Each body is then checked by its replica, as any peer message is. ``sort_items`` also says, in
  the same pass, whether an item named a partition of the cluster the node does not hold.

A failed send of an envelope (``SendFailed``) is each item's ``PeerUnreachable`` for its replica.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from kvstore.effects import Send, SetTimer
from kvstore.messages import NODE_PARTITION, Message, RaftBatch
from replication.raft_messages import AppendEntries

RAFT_TICK_TIMER = "raft-tick"
# Items per envelope: a receiver drops a larger one whole. A node holding every partition of a
# 1024-partition cluster still fits its heartbeats to one peer in one envelope.
MAX_BATCH_ITEMS = 1024
# Log entry bytes per envelope before the outbox starts another (Raft's own budget per append, and the peer
# transport's per POST): an envelope stays about as large as one append may be.
MAX_BATCH_BYTES = 1 << 20
# What an item costs beyond its entries' data, for the byte budget (the partition, the message's fields).
_ITEM_OVERHEAD_BYTES = 32
_ENTRY_OVERHEAD_BYTES = 16


class HeartbeatTicker:
    """The heartbeat timers of a node's leader replicas, as one node timer of ``interval_ms``."""

    def __init__(self, interval_ms: int) -> None:
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._interval_ms = interval_ms
        # Partition -> when (node clock) its replica asked for its heartbeat.
        self._wanted: dict[int, int] = {}
        # When the node timer is set for; None while it is not set.
        self._due_ms: int | None = None

    def start(self, partition: int, at_ms: int) -> list[SetTimer]:
        """A replica's ``StartTimer(heartbeat)``: the node timer is set (or moved earlier) if it fires later."""
        self._wanted[partition] = at_ms
        if self._due_ms is None or at_ms < self._due_ms:
            self._due_ms = at_ms
            return [SetTimer(RAFT_TICK_TIMER, at_ms)]
        return []

    def stop(self, partition: int) -> None:
        """A replica's ``StopTimer(heartbeat)`` (it stopped leading). The node timer may fire for nobody."""
        self._wanted.pop(partition, None)

    def fire(self, now_ms: int) -> list[int]:
        """The node timer fired: the partitions whose heartbeat falls due before the next tick, in partition
        order. Each fires its replica's heartbeat, which asks for the next one (``start``); ``rearm`` after."""
        self._due_ms = None
        horizon_ms = now_ms + self._interval_ms
        due = sorted(p for p, at_ms in self._wanted.items() if at_ms < horizon_ms)
        for partition in due:
            del self._wanted[partition]
        return due

    def rearm(self) -> list[SetTimer]:
        """After a tick: the node timer for the earliest heartbeat still wanted, if it is not set already."""
        if not self._wanted:
            return []
        at_ms = min(self._wanted.values())
        if self._due_ms is not None and self._due_ms <= at_ms:
            return []
        self._due_ms = at_ms
        return [SetTimer(RAFT_TICK_TIMER, at_ms)]


@dataclass(slots=True)
class _Envelope:
    items: list[tuple[int, object]]
    size_bytes: int


class RaftOutbox:
    """The replica messages of one step, to leave as envelopes at its end (``flush``)."""

    def __init__(self, node_id: str, max_items: int = MAX_BATCH_ITEMS, max_bytes: int = MAX_BATCH_BYTES) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")
        self._node_id = node_id
        self._max_items = max_items
        self._max_bytes = max_bytes
        # (destination, durable) -> its open envelope, in the order of their first items.
        self._open: dict[tuple[str, bool], _Envelope] = {}
        # Envelopes closed because they were full, in the order they filled.
        self._full: list[Send] = []

    def add(self, dst: str, durable: bool, partition: int, body: object) -> None:
        key = (dst, durable)
        size_bytes = _size_bytes(body)
        envelope = self._open.get(key)
        if envelope is not None and (
            len(envelope.items) >= self._max_items or envelope.size_bytes + size_bytes > self._max_bytes
        ):
            self._full.append(self._send(dst, durable, envelope))
            envelope = None
        if envelope is None:
            self._open[key] = _Envelope([(partition, body)], size_bytes)
        else:
            envelope.items.append((partition, body))
            envelope.size_bytes += size_bytes

    def flush(self) -> list[Send]:
        """Every envelope of the step; per destination and durability, the envelopes and their items are in the
        order the replicas sent them. The outbox is empty after."""
        if not self._open:
            return []
        out = self._full
        out.extend(self._send(dst, durable, envelope) for (dst, durable), envelope in self._open.items())
        self._full = []
        self._open = {}
        return out

    def _send(self, dst: str, durable: bool, envelope: _Envelope) -> Send:
        return Send(Message(self._node_id, dst, NODE_PARTITION, RaftBatch(tuple(envelope.items))), durable)


def batch_items(msg: Message, batch: RaftBatch, held: Container[int]) -> list[tuple[int, object]]:
    """The well-formed ``(partition, body)`` items of a received envelope for partitions in ``held``, in order;
    none if the envelope is over the bound or was not sent as node traffic."""
    return sort_items(msg, batch, held, 0)[0]


def sort_items(
    msg: Message, batch: RaftBatch, held: Container[int], partition_count: int
) -> tuple[list[tuple[int, object]], bool]:
    """``batch_items``, and in the same pass whether a well-formed item is for one of the cluster's
    ``partition_count`` partitions that is not in ``held``: the sender believes this node is in a group its map
    does not put it in."""
    items = batch.items
    if msg.partition != NODE_PARTITION or type(items) is not tuple or len(items) > MAX_BATCH_ITEMS:
        return [], False
    taken: list[tuple[int, object]] = []
    unheld = False
    for item in items:
        if type(item) is tuple and len(item) == 2 and type(item[0]) is int:
            if item[0] in held:
                taken.append(item)
            elif 0 <= item[0] < partition_count:
                unheld = True
    return taken, unheld


def _size_bytes(body: object) -> int:
    """About what ``body`` adds to an envelope: its log entries' data, plus a fixed cost."""
    if isinstance(body, AppendEntries):
        return _ITEM_OVERHEAD_BYTES + sum(len(entry.data) + _ENTRY_OVERHEAD_BYTES for entry in body.entries)
    return _ITEM_OVERHEAD_BYTES
