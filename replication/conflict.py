"""Conflict policies of leaderless mode: how a coordinator writes a key's state and how replicas merge two.

A policy is chosen per key prefix (the cluster config's ``[leaderless.policies]``); every replica resolves a
key to the same policy, so they all merge its states alike. Each one's ``merge`` is commutative, associative
and idempotent, which is what lets read repair, hinted handoff and anti-entropy deliver states in any order:

- ``siblings`` (the default): dotted version vectors (``replication.dvv``): concurrent writes are all kept
  and a read returns each, until a write that saw them supersedes them. Nothing acknowledged is lost.
- ``lww``: last writer wins by the coordinator's clock (``timestamp_ms``, then the dot): one value per key,
  and a concurrent or clock-skewed write is dropped silently, even one whose client read the value it loses to;
  the chaos checkers count what that loses.
- CRDT types (``replication/crdt.py``): the value is a replicated data type's state, and concurrent updates
  merge into one value instead of becoming siblings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from replication.dvv import Dot, Sibling, Versions, merge, update
from replication.vclock import VectorClock


class ConflictPolicy(Protocol):
    # Read-only, so that frozen dataclasses (every policy here) satisfy the protocol.
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
    """Only the clock orders values, ``(timestamp_ms, dot)``: a client's context supersedes nothing. Letting it
    (``dvv.merge``, then the newest) made merge order matter: a write that saw x but had an older clock dropped x
    in some orders and lost to a value x had beaten in others, so replicas did not converge."""

    name: str = "lww"

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        node, counter = dot
        if counter <= max(state.context.get(node) if state is not None else 0, seen.get(node)):
            raise ValueError(f"dot {dot} is not above the counters of {node} the state and the context hold")
        # ``seen`` supersedes nothing but joins the context, which ``next_dot`` reads.
        written = Versions((Sibling(dot, value, timestamp_ms),), seen.merge(VectorClock.of({node: counter})))
        return written if state is None else self.merge(state, written)

    def merge(self, a: Versions, b: Versions) -> Versions:
        newest = max((*a.siblings, *b.siblings), key=lambda s: (s.timestamp_ms, s.dot), default=None)
        return Versions(() if newest is None else (newest,), a.context.merge(b.context))
