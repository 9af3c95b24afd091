"""Conflict policies of leaderless mode: how a coordinator writes a key's state and how replicas merge two.

A policy is chosen per key prefix (the cluster config's ``[leaderless.policies]``); every replica resolves a
key to the same policy, so they all merge its states alike. Each one's ``merge`` is commutative, associative
and idempotent, which is what lets read repair, hinted handoff and anti-entropy deliver states in any order:

- ``siblings`` (the default): dotted version vectors (``replication.dvv``): concurrent writes are all kept
  and a read returns each, until a write that saw them supersedes them. Nothing acknowledged is lost.
- ``lww``: last writer wins by the coordinator's clock (``timestamp_ms``, then the dot): one value per key,
  and a concurrent or clock-skewed write is dropped silently; the chaos checkers count what that loses.
- CRDT types (``replication/crdt.py``): the value is a replicated data type's state, and concurrent updates
  merge into one value instead of becoming siblings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from replication.dvv import Dot, Versions, last_writer_wins, merge, update
from replication.vclock import VectorClock


class ConflictPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        """The state after a write of ``value`` (None: a delete) coordinated with ``dot`` by a client that read
        ``seen``. ValueError (``dvv.TooManySiblings``, or a CRDT op the type refuses) refuses the write."""
        ...

    def merge(self, a: Versions, b: Versions) -> Versions: ...


@dataclass(frozen=True)
class Siblings:
    max_siblings: int
    name: str = "siblings"

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        return update(state, seen, dot, value, timestamp_ms, max_siblings=self.max_siblings)

    def merge(self, a: Versions, b: Versions) -> Versions:
        return merge(a, b)


@dataclass(frozen=True)
class LastWriterWins:
    name: str = "lww"

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        # Whatever the client saw, the state holds at most one value: the bound on siblings never applies.
        written = update(state, seen, dot, value, timestamp_ms, max_siblings=2)
        return last_writer_wins(written)

    def merge(self, a: Versions, b: Versions) -> Versions:
        return last_writer_wins(merge(a, b))
