"""Hinted handoff: a fallback node keeps the writes meant for an unreachable replica and hands them over later.

In a sloppy quorum a coordinator whose preference replica T is unreachable sends the write to a fallback node F
instead (``KeyWriteRequest`` with ``hint_for=T``). F holds no replica of the partition, so F's *node* keeps the
state as a durable hint (``HintStore``) and, once T answers again, sends it to T's replica
(``HandoffRequest``); T merges it and answers ``HandoffAck``, and only then F drops the hint. This module is
that node-level logic, sans-IO: the node hands it the messages and a clock, and sends what it returns.

- One hint per (target, partition, key): a second hinted write merges into the first with the key's policy
  merge (the caller's ``merge``) and takes a *new* hint id, so an ack in flight for the old id cannot drop the
  newer state. The new hint is put before the old one is removed: a crash in between leaves both, and
  ``start`` merges them again.
- Bounded: past ``max_hints`` hints or ``max_hint_bytes`` bytes (keys and states) a hinted write is refused
  (``KeyWriteAck(ok=False)``, not durable), and the coordinator counts no ack; a state that does not decode is
  refused the same way. The store's ``put`` happens before the ack, which is durable, so the driver syncs it first.
- Delivery, per target, in hint id order: at most ``max_in_flight_per_target`` unacknowledged handoffs; one not
  acked after ``resend_after_ms`` is sent again. A target reported unreachable backs off exponentially (from
  ``handoff_interval_ms`` up to ``backoff_max_ms``); any message from it (``reachable``) ends the back-off.
  Every send is bounded per tick by the in-flight limit, so a target that never answers costs at most that
  many messages per ``resend_after_ms``.
- Hints expire ``max_hint_age_ms`` after the oldest write they hold (a merge keeps the first hint's time), as
  Cassandra's ``max_hint_window`` does: the node sets it to the tombstone grace period, so a hint older than a
  delete can never hand its value to a replica after the tombstone was purged. Nothing acknowledged is lost by
  it: the coordinator of every write is a preference replica that stored it, and anti-entropy spreads it.
- Hint ids start at the node's incarnation (random per boot) and count up, skipping the ids still held, so an
  ack for a hint delivered before a restart cannot drop a hint made after it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from replication import dvv
from replication.leaderless_messages import HandoffAck, HandoffRequest, KeyWriteAck, KeyWriteRequest

# Hint ids travel in messages as signed 64-bit integers.
_MAX_HINT_ID = (1 << 63) - 1

# (target, partition, key): what one hint holds the state of.
Slot = tuple[str, int, str]


@dataclass(frozen=True)
class Hint:
    hint_id: int
    target: str
    partition: int
    key: str
    # ``dvv.encode`` bytes (or the key policy's merge of several), handed to the target as they are.
    state: bytes
    created_ms: int

    @property
    def slot(self) -> Slot:
        return (self.target, self.partition, self.key)

    @property
    def size_bytes(self) -> int:
        return len(self.key.encode()) + len(self.state)


class HintStore(Protocol):
    """The node's durable storage of hints: written at once, synced by the driver before a durable effect."""

    def put(self, hint: Hint) -> None: ...

    def remove(self, hint_id: int) -> None: ...

    def load(self) -> list[Hint]:
        """Every hint held, at boot."""
        ...


@dataclass(frozen=True)
class HandoffSend:
    """A message for the node to send: ``body`` to ``dst`` for ``partition``, once synced if ``durable``."""

    dst: str
    partition: int
    body: object
    durable: bool


@dataclass
class HandoffStats:
    held: int = 0
    held_bytes: int = 0
    stored: int = 0  # hinted writes kept as a new hint
    merged: int = 0  # hinted writes merged into the hint of the same key
    refused_full: int = 0
    refused_invalid: int = 0  # a state that does not decode, or that the policy's merge refuses
    sent: int = 0  # handoffs sent for the first time
    resent: int = 0  # handoffs sent again, not acked in time or after a back-off
    delivered: int = 0
    expired: int = 0  # dropped undelivered after max_hint_age_ms
    stale_acks: int = 0  # acks for a hint no longer held (merged into a newer one, or delivered already)
    backoffs: int = 0


@dataclass
class _Target:
    """Delivery state of one target node: its hints in id order, those in flight, its back-off."""

    hint_ids: list[int] = field(default_factory=list)
    in_flight_since_ms: dict[int, int] = field(default_factory=dict)
    backoff_ms: int = 0
    blocked_until_ms: int = 0


class HintedHandoff:
    def __init__(
        self,
        store: HintStore,
        merge: Callable[[int, str, bytes, bytes], bytes],
        *,
        max_hints: int = 100_000,
        max_hint_bytes: int = 256 << 20,
        handoff_interval_ms: int = 1000,
        max_in_flight_per_target: int = 64,
        backoff_max_ms: int = 30_000,
        resend_after_ms: int = 5_000,
        max_hint_age_ms: int | None = None,
        incarnation: int,
    ) -> None:
        """``merge(partition, key, old_state, new_state)`` joins two states of a key by its conflict policy
        (ValueError refuses them). ``incarnation`` is the node's, random per boot, in [1, 2**63)."""
        if not 0 < incarnation <= _MAX_HINT_ID:
            raise ValueError("incarnation: expected a positive signed 64-bit integer")
        if min(max_hints, max_hint_bytes, handoff_interval_ms, max_in_flight_per_target, resend_after_ms) <= 0:
            raise ValueError("the bounds and intervals of hinted handoff must be positive")
        self._store = store
        self._merge = merge
        self._max_hints = max_hints
        self._max_hint_bytes = max_hint_bytes
        self._interval_ms = handoff_interval_ms
        self._max_in_flight = max_in_flight_per_target
        self._backoff_max_ms = max(backoff_max_ms, handoff_interval_ms)
        self._resend_after_ms = resend_after_ms
        self._max_age_ms = max_hint_age_ms
        self._next_id = incarnation
        self._hints: dict[int, Hint] = {}
        self._by_slot: dict[Slot, int] = {}
        self._targets: dict[str, _Target] = {}
        self.stats = HandoffStats()

    # ------------------------------------------------------------ inputs

    def start(self, now_ms: int) -> list[HandoffSend]:
        """Load the store's hints (after every boot) and send what is due."""
        for hint in sorted(self._store.load(), key=lambda h: h.hint_id):
            older_id = self._by_slot.get(hint.slot)
            if older_id is None:
                self._hold(hint)
                continue
            # A crash between a merge's put and its remove left two hints of one key: join them again.
            older = self._hints[older_id]
            self._replace(older, self._merge(hint.partition, hint.key, older.state, hint.state))
            self._store.remove(hint.hint_id)
        return self.tick(now_ms)

    def on_hinted_write(self, now_ms: int, src: str, partition: int, msg: KeyWriteRequest) -> list[HandoffSend]:
        """Keep ``msg.state`` as a hint for ``msg.hint_for`` and acknowledge it (durably), or refuse it."""
        if not msg.hint_for:
            self.stats.refused_invalid += 1
            return [self._refuse(src, partition, msg, "not a hinted write: hint_for is empty")]
        try:
            dvv.decode(msg.state)
        except ValueError as exc:
            self.stats.refused_invalid += 1
            return [self._refuse(src, partition, msg, str(exc))]
        slot = (msg.hint_for, partition, msg.key)
        held_id = self._by_slot.get(slot)
        if held_id is None:
            hint = Hint(self._new_id(), msg.hint_for, partition, msg.key, msg.state, now_ms)
            if len(self._hints) >= self._max_hints or not self._fits(hint.size_bytes):
                return [self._refuse_full(src, partition, msg)]
            self._store.put(hint)
            self._hold(hint)
            self.stats.stored += 1
        else:
            old = self._hints[held_id]
            try:
                state = self._merge(partition, msg.key, old.state, msg.state)
            except ValueError as exc:
                self.stats.refused_invalid += 1
                return [self._refuse(src, partition, msg, f"the key's policy refuses the merge: {exc}")]
            if not self._fits(len(state) - len(old.state)):
                return [self._refuse_full(src, partition, msg)]
            self._replace(old, state)
            self.stats.merged += 1
        return [HandoffSend(src, partition, KeyWriteAck(msg.req, msg.key), durable=True)]

    def on_ack(self, now_ms: int, src: str, partition: int, msg: HandoffAck) -> None:
        """The target merged hint ``msg.hint`` durably: drop it."""
        hint = self._hints.get(msg.hint)
        if hint is None or hint.target != src or hint.partition != partition:
            self.stats.stale_acks += 1
            return
        self._store.remove(hint.hint_id)
        self._drop(hint)
        self.stats.delivered += 1

    def on_unreachable(self, now_ms: int, dst: str, partition: int, msg: HandoffRequest) -> None:
        """The transport could not deliver a handoff to ``dst`` at all: back off that target."""
        target = self._targets.get(dst)
        if target is None:
            return
        target.in_flight_since_ms.pop(msg.hint, None)
        # One back-off per period: the other handoffs of the same round fail too and must not double it again.
        if now_ms < target.blocked_until_ms:
            return
        target.backoff_ms = min(max(2 * target.backoff_ms, self._interval_ms), self._backoff_max_ms)
        target.blocked_until_ms = now_ms + target.backoff_ms
        self.stats.backoffs += 1

    def reachable(self, node: str) -> None:
        """Any message from ``node``: it is up, so its hints are due at the next tick, whatever its back-off."""
        target = self._targets.get(node)
        if target is not None:
            target.backoff_ms = 0
            target.blocked_until_ms = 0

    def tick(self, now_ms: int) -> list[HandoffSend]:
        """The handoffs due: per target not backing off, those not acked in time again, then new ones in hint id
        order, at most ``max_in_flight_per_target`` unacknowledged."""
        if self._max_age_ms is not None:
            for hint in [h for h in self._hints.values() if h.created_ms + self._max_age_ms <= now_ms]:
                self._store.remove(hint.hint_id)
                self._drop(hint)
                self.stats.expired += 1
        sends: list[HandoffSend] = []
        for name in sorted(self._targets):
            target = self._targets[name]
            if now_ms < target.blocked_until_ms:
                continue
            for hint_id, since_ms in sorted(target.in_flight_since_ms.items()):
                if now_ms - since_ms >= self._resend_after_ms:
                    sends.append(self._send(target, self._hints[hint_id], now_ms))
                    self.stats.resent += 1
            for hint_id in target.hint_ids:
                if len(target.in_flight_since_ms) >= self._max_in_flight:
                    break
                if hint_id not in target.in_flight_since_ms:
                    sends.append(self._send(target, self._hints[hint_id], now_ms))
                    self.stats.sent += 1
        return sends

    def next_tick_ms(self, now_ms: int) -> int | None:
        """When the node should call ``tick`` next: None while no hint is held (a quiet node arms nothing)."""
        return now_ms + self._interval_ms if self._hints else None

    def hints(self) -> list[Hint]:
        """The hints held, in id order (for inspection and tests)."""
        return [self._hints[i] for i in sorted(self._hints)]

    # ------------------------------------------------------------ internals

    def _new_id(self) -> int:
        while True:
            hint_id = self._next_id
            self._next_id = hint_id + 1 if hint_id < _MAX_HINT_ID else 1
            if hint_id not in self._hints:
                return hint_id

    def _fits(self, extra_bytes: int) -> bool:
        return self.stats.held_bytes + extra_bytes <= self._max_hint_bytes

    def _replace(self, old: Hint, state: bytes) -> None:
        """``old``'s key with ``state``, under a new id; the new hint is on the store before the old one leaves."""
        hint = Hint(self._new_id(), old.target, old.partition, old.key, state, old.created_ms)
        self._store.put(hint)
        self._store.remove(old.hint_id)
        # Held before the old one is dropped, so the target's delivery state (its back-off) stays.
        self._hold(hint)
        self._drop(old)

    def _hold(self, hint: Hint) -> None:
        self._hints[hint.hint_id] = hint
        self._by_slot[hint.slot] = hint.hint_id
        insort(self._targets.setdefault(hint.target, _Target()).hint_ids, hint.hint_id)
        self.stats.held = len(self._hints)
        self.stats.held_bytes += hint.size_bytes

    def _drop(self, hint: Hint) -> None:
        del self._hints[hint.hint_id]
        if self._by_slot[hint.slot] == hint.hint_id:
            del self._by_slot[hint.slot]
        target = self._targets[hint.target]
        del target.hint_ids[bisect_left(target.hint_ids, hint.hint_id)]
        target.in_flight_since_ms.pop(hint.hint_id, None)
        if not target.hint_ids:
            del self._targets[hint.target]
        self.stats.held = len(self._hints)
        self.stats.held_bytes -= hint.size_bytes

    def _send(self, target: _Target, hint: Hint, now_ms: int) -> HandoffSend:
        target.in_flight_since_ms[hint.hint_id] = now_ms
        # Not durable: the hint is on the store already, and a handoff the target merges twice is harmless.
        return HandoffSend(hint.target, hint.partition, HandoffRequest(hint.hint_id, hint.key, hint.state), False)

    def _refuse_full(self, src: str, partition: int, msg: KeyWriteRequest) -> HandoffSend:
        self.stats.refused_full += 1
        reason = (
            f"hint store full: {self.stats.held} hints, {self.stats.held_bytes} bytes "
            f"(at most {self._max_hints} hints, {self._max_hint_bytes} bytes)"
        )
        return self._refuse(src, partition, msg, reason)

    @staticmethod
    def _refuse(src: str, partition: int, msg: KeyWriteRequest, reason: str) -> HandoffSend:
        return HandoffSend(src, partition, KeyWriteAck(msg.req, msg.key, ok=False, reason=reason), durable=False)
