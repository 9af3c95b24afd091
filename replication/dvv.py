"""Dotted version vectors: one key's concurrent values on one replica, and what each has seen.

A key's state (``Versions``) is a set of *siblings* and a causal *context*. Each sibling is a value (or a
tombstone: ``None``, a delete) with the *dot* that names the write that made it: the coordinating node and
that node's counter for the key, ``(node, n)``. The context is a vector clock that covers every dot the
state has seen, its siblings' and those of the values they superseded. This is Preguiça, Baquero et al.'s
dotted version vectors (the design Riak 2.0 adopted against the sibling explosion of plain vector clocks):

- a write carries the context its client read (``seen``): it supersedes exactly the siblings whose dots that
  context covers, and nothing else; a write without a context supersedes nothing and adds a sibling;
- the coordinator (a replica of the key) gives the write a dot ``(node, n)`` with ``n`` above every counter of
  its own that the local state or ``seen`` holds. The caller passes its next counter for the whole partition
  (kept on disk before any write it dots is acknowledged), not one per key: a key purged and written again
  must never reuse a dot that an old context still covers;
- two replicas' states merge (``merge``) by keeping each sibling the other has not seen, so merge is
  commutative, associative and idempotent: repair, hinted handoff and anti-entropy converge whatever order
  they deliver states in.

Siblings therefore only come from writes that did not see each other; ``update`` refuses a write that would
leave more than ``max_siblings`` on the coordinator (blind writers must read and resolve), which bounds a key's
siblings to ``max_siblings`` per coordinator and at most ``replicas * max_siblings`` after a merge.

Last-writer-wins (``lww``) keeps only the sibling with the largest ``(timestamp_ms, node)``: the other values
are discarded, which is the loss the chaos checkers count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from replication.vclock import VectorClock

# A dot: the node that coordinated a write, and that node's counter for the key.
Dot = tuple[str, int]

# What ``decode`` accepts: a state or context from a peer or a client is untrusted bytes.
MAX_CONTEXT_NODES = 256
MAX_DECODED_SIBLINGS = 4096
MAX_NODE_ID_CHARS = 64
_INT64_MAX = (1 << 63) - 1


class TooManySiblings(ValueError):
    """A write without a context that covers the siblings would take the key past ``max_siblings``."""


@dataclass(frozen=True, slots=True)
class Sibling:
    dot: Dot
    # None: a tombstone (a delete that has not been superseded).
    value: bytes | None
    # The coordinator's clock when it took the write: only last-writer-wins and the TTL of tombstones use it.
    timestamp_ms: int

    def seen_by(self, context: VectorClock) -> bool:
        return context.get(self.dot[0]) >= self.dot[1]


@dataclass(frozen=True, slots=True)
class Versions:
    """One key's state on one replica: siblings sorted by dot (one per dot), and a context covering them."""

    siblings: tuple[Sibling, ...]
    context: VectorClock

    def __post_init__(self) -> None:
        dots = [s.dot for s in self.siblings]
        if dots != sorted(set(dots)):
            raise ValueError("siblings must be sorted by dot, one per dot")
        if not all(s.seen_by(self.context) for s in self.siblings):
            raise ValueError("the context must cover every sibling's dot")

    @property
    def values(self) -> tuple[bytes, ...]:
        """The live values, in dot order (tombstones are not served)."""
        return tuple(s.value for s in self.siblings if s.value is not None)

    @property
    def deleted(self) -> bool:
        """Every sibling is a tombstone: a read finds no value, and the state waits to be purged."""
        return all(s.value is None for s in self.siblings)

    def newest_ms(self) -> int:
        return max((s.timestamp_ms for s in self.siblings), default=0)


EMPTY = Versions((), VectorClock())


def update(
    state: Versions | None,
    seen: VectorClock,
    dot: Dot,
    value: bytes | None,
    timestamp_ms: int,
    *,
    max_siblings: int,
) -> Versions:
    """The state after ``dot``'s node coordinates a write of ``value`` (None: a delete) by a client that had
    read ``seen``. ``dot`` must be above every counter of its node in the state and in ``seen`` (``next_dot``).
    TooManySiblings if more than ``max_siblings`` would remain."""
    state = state or EMPTY
    node, counter = dot
    if counter <= max(state.context.get(node), seen.get(node)):
        raise ValueError(f"dot {dot} is not above the counters of {node} the state and the context hold")
    kept = tuple(s for s in state.siblings if not s.seen_by(seen))
    if len(kept) >= max_siblings:
        raise TooManySiblings(
            f"the key has {len(kept)} values this write did not see (at most {max_siblings} are kept): read it, "
            f"then write with the context the read returned"
        )
    context = state.context.merge(seen).merge(VectorClock.of({node: counter}))
    return Versions(tuple(sorted((*kept, Sibling(dot, value, timestamp_ms)), key=_dot)), context)


def next_dot(state: Versions | None, seen: VectorClock, node: str, partition_counter: int) -> Dot:
    """The dot ``node`` gives its next write of a key: past its partition-wide counter, and past every counter of
    its own the key's state or the client's context holds (a context from before a crash that lost the counter
    included). The caller keeps the returned counter as its partition counter."""
    own = max(state.context.get(node) if state is not None else 0, seen.get(node))
    return (node, max(partition_counter, own) + 1)


def merge(a: Versions, b: Versions) -> Versions:
    """``a`` and ``b`` joined: each sibling that the other state holds too or has not seen."""
    theirs = set(b.siblings)
    mine = set(a.siblings)
    kept = {s for s in a.siblings if s in theirs or not s.seen_by(b.context)}
    kept.update(s for s in b.siblings if s in mine or not s.seen_by(a.context))
    return Versions(tuple(sorted(kept, key=_dot)), a.context.merge(b.context))


def merge_all(states: Iterable[Versions]) -> Versions:
    result = EMPTY
    for state in states:
        result = merge(result, state)
    return result


def last_writer_wins(state: Versions) -> Versions:
    """``state`` with only its newest sibling by ``(timestamp_ms, node, counter)``, the context unchanged."""
    if len(state.siblings) <= 1:
        return state
    newest = max(state.siblings, key=lambda s: (s.timestamp_ms, s.dot))
    return Versions((newest,), state.context)


def _dot(sibling: Sibling) -> Dot:
    return sibling.dot


# ---------------------------------------------------------------- bytes
#
# One canonical encoding (msgpack, siblings in dot order, context entries in node order), so equal states are
# equal bytes on every machine: anti-entropy hashes them, and a client's context round-trips unchanged.


def encode(state: Versions) -> bytes:
    siblings = [[s.dot[0], s.dot[1], s.value, s.timestamp_ms] for s in state.siblings]
    return msgpack.packb([siblings, _clock_list(state.context)], use_bin_type=True)


def decode(data: bytes) -> Versions:
    """The state ``encode`` made; ValueError for anything else (wrong shape, out-of-range numbers, too big)."""
    try:
        raw = _unpack(data)
        if not isinstance(raw, list) or len(raw) != 2:
            raise ValueError("expected [siblings, context]")
        siblings_raw, context_raw = raw
        if not isinstance(siblings_raw, list) or len(siblings_raw) > MAX_DECODED_SIBLINGS:
            raise ValueError(f"siblings: expected a list of at most {MAX_DECODED_SIBLINGS}")
        siblings = []
        for item in siblings_raw:
            if not isinstance(item, list) or len(item) != 4:
                raise ValueError("a sibling: expected [node, counter, value, timestamp_ms]")
            node, counter, value, timestamp_ms = item
            if value is not None and not isinstance(value, bytes):
                raise ValueError("a sibling's value: expected bytes or nil")
            siblings.append(Sibling((_node(node), _counter(counter)), value, _int64(timestamp_ms)))
        return Versions(tuple(siblings), _clock(context_raw))
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an encoded key state: {exc}") from exc


def encode_context(context: VectorClock) -> bytes:
    return msgpack.packb(_clock_list(context), use_bin_type=True)


def decode_context(data: bytes) -> VectorClock:
    """A context ``encode_context`` made (empty bytes: the empty context); ValueError for anything else."""
    if not data:
        return VectorClock()
    try:
        return _clock(_unpack(data))
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an encoded context: {exc}") from exc


def _unpack(data: bytes) -> object:
    # unpackb bounds every container by the input's length already; no maps are expected at all.
    return msgpack.unpackb(data, raw=False, use_list=True, max_map_len=0)


def _clock_list(clock: VectorClock) -> list[list[object]]:
    return [[node, counter] for node, counter in clock.entries]


def _clock(raw: object) -> VectorClock:
    if not isinstance(raw, list) or len(raw) > MAX_CONTEXT_NODES:
        raise ValueError(f"context: expected a list of at most {MAX_CONTEXT_NODES} [node, counter] pairs")
    entries = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError("context: expected [node, counter] pairs")
        entries.append((_node(item[0]), _counter(item[1])))
    return VectorClock(tuple(entries))  # checks the order and that each node is there once


def _node(raw: object) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_NODE_ID_CHARS:
        raise ValueError(f"a node id: expected 1 to {MAX_NODE_ID_CHARS} characters")
    return raw


def _counter(raw: object) -> int:
    if type(raw) is not int or not 0 < raw <= _INT64_MAX:
        raise ValueError("a counter: expected a positive 64-bit integer")
    return raw


def _int64(raw: object) -> int:
    if type(raw) is not int or not 0 <= raw <= _INT64_MAX:
        raise ValueError("a timestamp: expected a non-negative 64-bit integer")
    return raw
