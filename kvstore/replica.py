"""One partition's protocol instance on a node, and the foundation's single-copy implementation.

The node hands every input for partition ``p`` to ``replicas[p].step(now_ms, input)``. A replica
answers an operation with ``Reply(token, result)``, where ``token`` is the one the node gave it in
``ReplicaOp``: the node routes the result to whoever is waiting (a client, a peer, a batch). Later
replication modes (leader/follower, leaderless...) implement the same interface: they may answer
later, send peer messages (``Send`` with this partition's id) and set timers (keys local to the replica;
the node namespaces them per partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvstore.effects import Effect, Reply
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CasOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    KeyOp,
    Message,
    PutOp,
    Result,
    ScanItem,
    ScanPage,
    TimerFired,
    Written,
)
from kvstore.storage.base import Storage


@dataclass(frozen=True)
class ReplicaOp:
    token: int
    op: KeyOp


ReplicaInput = ReplicaOp | Message | TimerFired


class PartitionReplica(Protocol):
    partition: int

    def step(self, now_ms: int, inp: ReplicaInput) -> list[Effect]:
        ...

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> ScanPage:
        """Up to ``limit`` live items in ``[start, end)``, as this replica may serve them."""
        ...


def apply_op(storage: Storage, partition: int, now_ms: int, op: KeyOp) -> Result:
    """Execute one key operation against this node's storage: the state machine every mode applies."""
    if isinstance(op, GetOp):
        record = storage.get(partition, op.key, now_ms)
        if record is None:
            return Failure.of(ErrorCode.NOT_FOUND, f"key {op.key!r} not found")
        return Found(op.key, record.value, record.version, record.expires_at_ms)
    if isinstance(op, PutOp):
        expires = None if op.ttl_ms is None else now_ms + op.ttl_ms
        written = storage.put(partition, op.key, op.value, expires)
        return Written(op.key, written.version)
    if isinstance(op, DeleteOp):
        # An expired record not yet purged is already gone as far as clients can tell.
        existed = storage.get(partition, op.key, now_ms) is not None
        storage.delete(partition, op.key)
        return Deleted(op.key, existed)
    if isinstance(op, CasOp):
        current = storage.get(partition, op.key, now_ms)
        current_value = None if current is None else current.value
        if current_value != op.expected:
            wanted = "absent" if op.expected is None else "the expected value"
            return Failure.of(ErrorCode.PRECONDITION_FAILED, f"key {op.key!r} is not {wanted}")
        if op.new is None:
            storage.delete(partition, op.key)
            return Deleted(op.key, current is not None)
        expires = None if op.ttl_ms is None else now_ms + op.ttl_ms
        return Written(op.key, storage.put(partition, op.key, op.new, expires).version)
    raise TypeError(f"not a key operation: {op!r}")


class SingleCopyReplica:
    """The only copy of a partition: every operation is applied to local storage at once."""

    def __init__(self, partition: int, storage: Storage) -> None:
        self.partition = partition
        self._storage = storage

    def step(self, now_ms: int, inp: ReplicaInput) -> list[Effect]:
        if isinstance(inp, ReplicaOp):
            return [Reply(inp.token, apply_op(self._storage, self.partition, now_ms, inp.op))]
        # A single copy exchanges no messages and sets no timers; anything else is stale and ignored.
        return []

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> ScanPage:
        rows = self._storage.scan(self.partition, start, end, limit + 1, now_ms)
        items = tuple(ScanItem(k, r.value, r.version) for k, r in rows[:limit])
        return ScanPage(items, truncated=len(rows) > limit)
