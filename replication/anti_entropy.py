"""Merkle-tree anti-entropy: the replicas of one partition converge in the background (Riak's AAE).

The tree. ``MerkleTree`` puts a key in leaf ``blake2b(key) % leaves`` (never Python's ``hash()``, which changes
between processes). A leaf's hash is the XOR of a 16-byte ``blake2b(key, state)`` digest of each of its keys,
so a change of one key (``update(key, old, new)``) XORs one digest out and one in, O(1), whatever the order of
the changes: equal contents give equal trees. The inner levels (``fanout`` children a node, the root level 0)
hash their children's hashes; they are recomputed lazily from dirty marks, so the many writes between two
rounds cost one recomputation of the paths they touched. Each leaf also keeps the set of its keys: the round
needs them, and the owner's store can only list keys in key order.

A round between an initiator and a peer (``AntiEntropy``, messages in ``anti_entropy_messages.py``) is a
strict ping-pong, so one message per round is in flight and neither side ever queues more than one chunk:

1. ``AeStart``: the initiator's root. An equal root ends the round at once (``AeDone``): two messages.
2. ``AeHashes``: each side in turn sends its hashes of the children of the nodes it found differing one level
   up, so the walk descends only into differing subtrees. The tree's shape bounds these messages, not the
   per-message limits: at most one level (1024 hashes, about 20 KB, at the default shape).
3. The side that receives the leaf hashes knows the differing leaves and walks their keys in ``(leaf, key)``
   order, one chunk at a time: ``AeKeys`` with its ``(key, digest)`` pairs (at most ``max_keys_per_message``
   and about ``max_bytes_per_message``). The other side compares them with its own keys of that chunk (at
   most ``max_keys_per_message`` of them: if it holds more, it compares a prefix and says where it stopped,
   ``until``, and the next chunk starts there) and answers ``AeDiff``: the keys it wants and the first of
   its states the first side lacks or holds differently. ``AeStates`` carry the rest both ways until both
   sides are drained; then the next chunk, and ``AeDone`` after the last. States go both ways because the
   owner merges (a union): each side ends up with the merge of both.

Both sides fetch states through the owner's ``states`` callback when a message needs them, so what travels
is the current state, and memory holds at most one chunk's keys. The states handed back (``AeStep.merge``) are
the peer's bytes, untrusted: the owner decodes them (``dvv.decode`` raises ValueError) and merges them with
the key's policy, then calls ``record`` like for any store change. The owner calls ``record`` for every key
at load too, since the tree lives in memory.

Robustness: a round that gets no answer for ``round_timeout_ms`` is abandoned (``on_timer``, which tells the
peer). A message of an unknown or finished round, or at a step not expected, is ignored; one whose fields
are malformed (a wrong level, indices out of range or not children of what was sent, lengths that do not
match, too many items, keys outside the chunk, states nobody asked for) is ignored as a whole, never raises.
A duplicate of a round's start is ignored, also once the round ended (the last ``REMEMBERED_ROUNDS`` are
remembered). A peer that claims ``more`` without sending anything is taken at its word that it has nothing,
so every message makes progress. A replica runs one round of its own at a time and answers at most
``MAX_ANSWERED_ROUNDS`` at once.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from replication.anti_entropy_messages import (
    ANTI_ENTROPY_MESSAGES,
    AeAbort,
    AeDiff,
    AeDone,
    AeHashes,
    AeKeys,
    AeStart,
    AeStates,
)

__all__ = ["ANTI_ENTROPY_MESSAGES", "AeStep", "AntiEntropy", "MerkleTree", "RoundStats", "key_digest"]

HASH_BYTES = 16
MAX_LEAVES = 1 << 20
# Rounds this replica answers at once (peers starting theirs); one more is refused until one ends.
MAX_ANSWERED_ROUNDS = 4
# Rounds this replica answered and ended, remembered so that a late duplicate of their start opens nothing.
REMEMBERED_ROUNDS = 64
# What a message's integers (levels, indices, leaves) are counted as in ``RoundStats``' bytes.
_INT_BYTES = 4

States = Callable[[Sequence[str]], dict[str, bytes]]
Send = tuple[str, object]


def _key_bytes(key: str) -> bytes:
    # surrogatepass: any str a client managed to send hashes the same on every replica.
    return key.encode("utf-8", "surrogatepass")


def key_digest(key: str, state: bytes) -> bytes:
    """The 16-byte digest of one key's state: what a leaf XORs and what rounds compare key by key."""
    encoded = _key_bytes(key)
    data = len(encoded).to_bytes(4, "big") + encoded + state
    return hashlib.blake2b(data, digest_size=HASH_BYTES, person=b"kv-ae-key").digest()


class MerkleTree:
    """A hash tree over a partition's ``(key, state)`` pairs; level 0 is the root, the last level the leaves."""

    def __init__(self, leaves: int = 1024, fanout: int = 16) -> None:
        if not 1 <= leaves <= MAX_LEAVES:
            raise ValueError(f"leaves must be within 1..{MAX_LEAVES}")
        if fanout < 2:
            raise ValueError("fanout must be at least 2")
        self.leaves = leaves
        self.fanout = fanout
        sizes = [leaves]
        while sizes[0] > 1:
            sizes.insert(0, -(-sizes[0] // fanout))
        self.level_sizes: tuple[int, ...] = tuple(sizes)
        self.leaf_level = len(sizes) - 1
        self._xor = [0] * leaves
        self._keys: list[set[str]] = [set() for _ in range(leaves)]
        self._inner: list[list[bytes]] = [[b""] * size for size in sizes[:-1]]
        self._dirty: set[int] = set(range(leaves))

    def leaf_of(self, key: str) -> int:
        digest = hashlib.blake2b(_key_bytes(key), digest_size=8, person=b"kv-ae-leaf").digest()
        return int.from_bytes(digest, "big") % self.leaves

    def update(self, key: str, old_state: bytes | None, new_state: bytes | None) -> None:
        """``key`` went from ``old_state`` to ``new_state`` (None: absent). The caller must pass the state the
        tree holds as ``old_state``: the tree keeps digests, not states."""
        leaf = self.leaf_of(key)
        if old_state is not None:
            self._xor[leaf] ^= int.from_bytes(key_digest(key, old_state), "big")
            self._keys[leaf].discard(key)
        if new_state is not None:
            self._xor[leaf] ^= int.from_bytes(key_digest(key, new_state), "big")
            self._keys[leaf].add(key)
        self._dirty.add(leaf)

    def sorted_keys_in(self, leaf: int, key_from: str = "", key_to: str | None = None) -> list[str]:
        """The leaf's keys in ``[key_from, key_to)`` (``key_to`` None: no upper bound), in key order."""
        return sorted(k for k in self._keys[leaf] if k >= key_from and (key_to is None or k < key_to))

    def root(self) -> bytes:
        return self.hashes(0, (0,))[0]

    def hashes(self, level: int, indices: Iterable[int]) -> tuple[bytes, ...]:
        """The hashes of nodes ``indices`` of ``level``; IndexError for a level or index out of range."""
        self._refresh()
        if not 0 <= level <= self.leaf_level:
            raise IndexError(f"no level {level}")
        size = self.level_sizes[level]
        found: list[bytes] = []
        for index in indices:
            if not 0 <= index < size:
                raise IndexError(f"no node {index} at level {level}")
            found.append(self._hash(level, index))
        return tuple(found)

    def children(self, level: int, index: int) -> range:
        """The indices at ``level + 1`` of node ``index``'s children."""
        first = index * self.fanout
        return range(first, min(first + self.fanout, self.level_sizes[level + 1]))

    def _hash(self, level: int, index: int) -> bytes:
        if level == self.leaf_level:
            return self._xor[index].to_bytes(HASH_BYTES, "big")
        return self._inner[level][index]

    def _refresh(self) -> None:
        if not self._dirty:
            return
        touched = self._dirty
        self._dirty = set()
        for level in range(self.leaf_level - 1, -1, -1):
            touched = {index // self.fanout for index in touched}
            for index in touched:
                joined = b"".join(self._hash(level + 1, child) for child in self.children(level, index))
                self._inner[level][index] = hashlib.blake2b(
                    joined, digest_size=HASH_BYTES, person=b"kv-ae-node"
                ).digest()


@dataclass(frozen=True)
class RoundStats:
    peer: str
    leaves_differing: int
    keys_sent: int
    keys_received: int
    # What the round's messages carried, both ways: hashes, digests, keys, states (integers as 4 bytes).
    bytes_sent: int
    bytes_received: int


@dataclass
class AeStep:
    sends: list[Send] = field(default_factory=list)
    # States from the peer for the owner to merge into its store: untrusted bytes.
    merge: list[tuple[str, bytes]] = field(default_factory=list)
    # Set when a round ended on this side.
    finished: RoundStats | None = None


@dataclass(frozen=True)
class _Chunk:
    """A stretch of the differing leaves' keys: ``key_from`` (inclusive) of ``leaves[0]`` to ``key_to``
    (exclusive) of ``leaves[-1]``, or to its end when ``key_to`` is None."""

    leaves: tuple[int, ...]
    key_from: str
    key_to: str | None

    def contains(self, leaf: int, key: str) -> bool:
        if leaf not in self.leaves or (leaf, key) < (self.leaves[0], self.key_from):
            return False
        return self.key_to is None or (leaf, key) < (self.leaves[-1], self.key_to)

    def cut(self, until: tuple[int, str] | None) -> _Chunk:
        """The chunk up to ``until`` (exclusive; None: all of it)."""
        if until is None:
            return self
        leaf, key = until
        return _Chunk(tuple(x for x in self.leaves if x <= leaf), self.key_from, key)


@dataclass
class _Round:
    peer: str
    session: int
    initiator: bool
    last_ms: int
    step: int  # the round's last step, sent or received: the next message, either way, is one more
    # The messages this side takes next (ping-pong: set by what it sent last).
    expect: tuple[type, ...] = ()
    # Hash walk: the level and indices of the hashes this side sent last.
    sent_level: int = 0
    sent_indices: tuple[int, ...] = (0,)
    # Key walk, the side that found the differing leaves: those leaves, and where the next chunk starts
    # (a position in ``differing`` and a first key).
    driver: bool = False
    differing: tuple[int, ...] = ()
    cursor: tuple[int, str] = (0, "")
    # Key walk, both sides: the chunk being exchanged, the keys whose states this side owes the peer, the keys
    # it asked for, and whether the peer said it has more.
    chunk: _Chunk | None = None
    chunk_item_keys: frozenset[str] = frozenset()
    owed: deque[str] = field(default_factory=deque)
    wanted: set[str] = field(default_factory=set)
    peer_more: bool = False
    leaves_seen: set[int] = field(default_factory=set)
    keys_sent: int = 0
    keys_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def stats(self) -> RoundStats:
        leaves = len(self.differing) if self.driver else len(self.leaves_seen)
        return RoundStats(self.peer, leaves, self.keys_sent, self.keys_received, self.bytes_sent, self.bytes_received)


def _payload_bytes(msg: object) -> int:
    """What a message carries, as ``RoundStats`` counts it."""
    if isinstance(msg, AeStart):
        return len(msg.root)
    if isinstance(msg, AeHashes):
        return _INT_BYTES + sum(_INT_BYTES + len(h) for h in msg.hashes)
    if isinstance(msg, AeKeys):
        bounds = len(_key_bytes(msg.key_from)) + len(_key_bytes(msg.key_to or ""))
        return bounds + _INT_BYTES * len(msg.leaves) + sum(len(_key_bytes(k)) + len(d) for k, d in msg.items)
    if isinstance(msg, AeDiff):
        until = 0 if msg.until is None else _INT_BYTES + len(_key_bytes(msg.until[1]))
        return until + sum(len(_key_bytes(k)) for k in msg.want) + _states_bytes(msg.states)
    if isinstance(msg, AeStates):
        return _states_bytes(msg.states)
    return 0


def _states_bytes(states: Iterable[tuple[str, bytes]]) -> int:
    return sum(len(_key_bytes(k)) + len(s) for k, s in states)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_int_tuple(value: object) -> bool:
    return type(value) is tuple and all(_is_int(v) for v in value)


def _is_str_tuple(value: object) -> bool:
    return type(value) is tuple and all(type(v) is str for v in value)


def _is_pairs(value: object, digests: bool) -> bool:
    """A tuple of ``(str, bytes)`` pairs; with ``digests``, the bytes are 16 long."""
    if type(value) is not tuple:
        return False
    for pair in value:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not bytes:
            return False
        if digests and len(pair[1]) != HASH_BYTES:
            return False
    return True


_Ordered = TypeVar("_Ordered", int, tuple[int, str])


def _ascending(values: Sequence[_Ordered]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


class AntiEntropy:
    """One replica's anti-entropy for one partition: its tree, the round it runs and the rounds it answers."""

    def __init__(
        self,
        *,
        leaves: int = 1024,
        fanout: int = 16,
        max_keys_per_message: int = 256,
        max_bytes_per_message: int = 1 << 20,
        round_timeout_ms: int = 5000,
    ) -> None:
        if max_keys_per_message < 1 or max_bytes_per_message < 1 or round_timeout_ms < 1:
            raise ValueError("the per-message limits and the round timeout must be positive")
        self.tree = MerkleTree(leaves, fanout)
        self.max_keys_per_message = max_keys_per_message
        # A soft bound: a single state larger than it still travels, alone, so every message makes progress.
        self.max_bytes_per_message = max_bytes_per_message
        self.round_timeout_ms = round_timeout_ms
        self._own: _Round | None = None
        self._answering: dict[tuple[str, int], _Round] = {}
        self._answered: deque[tuple[str, int]] = deque(maxlen=REMEMBERED_ROUNDS)

    # --- the owner's calls -------------------------------------------------------------------------------

    def record(self, key: str, old: bytes | None, new: bytes | None) -> None:
        """Every change of the store: ``key`` went from ``old`` to ``new`` (None: absent)."""
        self.tree.update(key, old, new)

    @property
    def running(self) -> bool:
        """Whether this replica's own round is under way (``start`` then does nothing)."""
        return self._own is not None

    def next_deadline_ms(self) -> int | None:
        """When ``on_timer`` next has a round to abandon, if nothing is heard before; None: no round."""
        rounds = [*self._answering.values(), *([self._own] if self._own else [])]
        return min((r.last_ms + self.round_timeout_ms for r in rounds), default=None)

    def start(self, now_ms: int, peer: str, session: int) -> list[Send]:
        """Start a round with ``peer``; ``session`` should be random, so rounds of two peers never share it.
        Nothing while this replica's own round is under way."""
        if self._own is not None:
            return []
        self._own = _Round(peer, session, initiator=True, last_ms=now_ms, step=-1)
        msg = AeStart(session, 0, self.tree.leaves, self.tree.fanout, self.tree.root())
        return [self._send(self._own, msg)]

    def on_timer(self, now_ms: int) -> list[Send]:
        """Abandon every round that heard nothing for ``round_timeout_ms``, telling its peer."""
        sends: list[Send] = []
        rounds = [*self._answering.values(), *([self._own] if self._own else [])]
        for r in rounds:
            if now_ms - r.last_ms < self.round_timeout_ms:
                continue
            self._forget(r)
            sends.append((r.peer, AeAbort(r.session, r.initiator)))
        return sends

    def on_message(self, now_ms: int, src: str, msg: object, states: States) -> AeStep:
        """A peer's message. ``states(keys)`` gives this replica's current states of ``keys`` (absent ones left
        out). Whatever is not a well-formed next message of a live round is ignored: an empty step."""
        if isinstance(msg, AeAbort):
            self._on_abort(src, msg)
            return AeStep()
        if isinstance(msg, AeStart):
            return self._on_start(now_ms, src, msg, states)
        if not isinstance(msg, AeHashes | AeKeys | AeDiff | AeStates | AeDone):
            return AeStep()
        step, session = msg.step, msg.session
        if not _is_int(step) or not _is_int(session):
            return AeStep()
        r = self._own if step % 2 == 1 else self._answering.get((src, session))
        if r is None or r.peer != src or r.session != session or step != r.step + 1 or type(msg) not in r.expect:
            return AeStep()
        out = AeStep()
        if isinstance(msg, AeHashes):
            handled = self._on_hashes(r, msg, out, states)
        elif isinstance(msg, AeKeys):
            handled = self._on_keys(r, msg, out, states)
        elif isinstance(msg, AeDiff):
            handled = self._on_diff(r, msg, out, states)
        elif isinstance(msg, AeStates):
            handled = self._on_states(r, msg, out, states)
        else:
            handled = True
            r.step = step
            self._finish(r, out)
        if not handled:
            return AeStep()
        r.bytes_received += _payload_bytes(msg)
        r.last_ms = now_ms
        return out

    # --- the hash walk -----------------------------------------------------------------------------------

    def _on_start(self, now_ms: int, src: str, msg: AeStart, states: States) -> AeStep:
        shape_ok = msg.leaves == self.tree.leaves and msg.fanout == self.tree.fanout
        if not (_is_int(msg.session) and _is_int(msg.step) and msg.step == 0 and shape_ok and type(msg.root) is bytes):
            return AeStep()
        if len(msg.root) != HASH_BYTES:
            return AeStep()
        key = (src, msg.session)
        # A known session's start is a duplicate (a peer that restarted starts a session of a new id).
        if key in self._answering or key in self._answered or len(self._answering) >= MAX_ANSWERED_ROUNDS:
            return AeStep()
        r = _Round(src, msg.session, initiator=False, last_ms=now_ms, step=0)
        r.bytes_received += _payload_bytes(msg)
        self._answering[key] = r
        out = AeStep()
        self._compare_level(r, 0, (0,), (msg.root,), out, states)
        return out

    def _on_hashes(self, r: _Round, msg: AeHashes, out: AeStep, states: States) -> bool:
        if not _is_int(msg.level) or msg.level != r.sent_level + 1 or msg.level > self.tree.leaf_level:
            return False
        indices, hashes = msg.indices, msg.hashes
        if not _is_int_tuple(indices) or type(hashes) is not tuple or len(indices) != len(hashes):
            return False
        if not all(type(h) is bytes and len(h) == HASH_BYTES for h in hashes) or not _ascending(indices):
            return False
        parents = set(r.sent_indices)
        if not indices or not all(0 <= i < self.tree.level_sizes[msg.level] for i in indices):
            return False
        if not all(i // self.tree.fanout in parents for i in indices):
            return False
        r.step = msg.step
        self._compare_level(r, msg.level, indices, hashes, out, states)
        return True

    def _compare_level(
        self,
        r: _Round,
        level: int,
        indices: tuple[int, ...],
        hashes: tuple[bytes, ...],
        out: AeStep,
        states: States,
    ) -> None:
        """Compare the peer's hashes at ``level`` with ours: done, descend one level, or walk the leaves' keys."""
        own = self.tree.hashes(level, indices)
        differing = tuple(i for i, mine, theirs in zip(indices, own, hashes, strict=True) if mine != theirs)
        if not differing:
            self._send_and_finish(r, out)
        elif level == self.tree.leaf_level:
            r.driver = True
            r.differing = differing
            r.cursor = (0, "")
            self._drive(r, out, states)
        else:
            children = tuple(c for i in differing for c in self.tree.children(level, i))
            r.sent_level, r.sent_indices = level + 1, children
            own_children = self.tree.hashes(level + 1, children)
            out.sends.append(self._send(r, AeHashes(r.session, r.step + 1, level + 1, children, own_children)))

    # --- the key walk, the side that found the differing leaves ------------------------------------------

    def _drive(self, r: _Round, out: AeStep, states: States) -> None:
        """Our next message as the driver: owed or awaited states, else the next chunk, else the end."""
        if r.owed or r.peer_more:
            out.sends.append(self._send(r, self._states_message(r, states)))
        elif r.cursor[0] < len(r.differing):
            out.sends.append(self._send(r, self._next_chunk(r, states)))
        else:
            self._send_and_finish(r, out)

    def _next_chunk(self, r: _Round, states: States) -> AeKeys:
        position, key_from = r.cursor
        leaves: list[int] = []
        keys: list[str] = []
        key_to: str | None = None
        size = 0
        while position < len(r.differing) and len(leaves) < self.max_keys_per_message and key_to is None:
            leaf = r.differing[position]
            leaves.append(leaf)
            for key in self.tree.sorted_keys_in(leaf, key_from if len(leaves) == 1 else ""):
                cost = len(_key_bytes(key)) + HASH_BYTES
                if keys and (len(keys) >= self.max_keys_per_message or size + cost > self.max_bytes_per_message):
                    key_to = key
                    break
                keys.append(key)
                size += cost
            position += 1
        found = states(keys)
        items = tuple((k, key_digest(k, found[k])) for k in keys if k in found)
        r.chunk = _Chunk(tuple(leaves), key_from, key_to)
        r.chunk_item_keys = frozenset(k for k, _ in items)
        return AeKeys(r.session, r.step + 1, tuple(leaves), key_from, key_to, items)

    def _on_diff(self, r: _Round, msg: AeDiff, out: AeStep, states: States) -> bool:
        chunk = r.chunk
        if chunk is None or type(msg.more) is not bool:
            return False
        until = msg.until
        if until is not None:
            if type(until) is not tuple or len(until) != 2 or not _is_int(until[0]) or type(until[1]) is not str:
                return False
            if not chunk.contains(*until) or until == (chunk.leaves[0], chunk.key_from):
                return False
        compared = chunk.cut(until)
        if (
            not _is_str_tuple(msg.want)
            or len(msg.want) > self.max_keys_per_message
            or len(set(msg.want)) != len(msg.want)
        ):
            return False
        if not all(k in r.chunk_item_keys and compared.contains(self.tree.leaf_of(k), k) for k in msg.want):
            return False
        if not self._states_in(msg.states, compared):
            return False
        r.step = msg.step
        r.chunk = compared
        r.owed = deque(msg.want)
        self._receive_states(r, msg.states, msg.more, out)
        if until is not None:
            r.cursor = (r.differing.index(until[0]), until[1])
        elif chunk.key_to is not None:
            r.cursor = (r.differing.index(chunk.leaves[-1]), chunk.key_to)
        else:
            r.cursor = (r.differing.index(chunk.leaves[-1]) + 1, "")
        self._drive(r, out, states)
        return True

    # --- the key walk, the other side ----------------------------------------------------------------------

    def _on_keys(self, r: _Round, msg: AeKeys, out: AeStep, states: States) -> bool:
        if r.driver or r.owed or r.peer_more or r.sent_level != self.tree.leaf_level:
            return False
        leaves, items = msg.leaves, msg.items
        if not _is_int_tuple(leaves) or not leaves or len(leaves) > self.max_keys_per_message:
            return False
        if not _ascending(leaves) or not set(leaves) <= set(r.sent_indices):
            return False
        if type(msg.key_from) is not str or not (msg.key_to is None or type(msg.key_to) is str):
            return False
        chunk = _Chunk(leaves, msg.key_from, msg.key_to)
        if chunk.key_to is not None and (leaves[-1], chunk.key_to) <= (leaves[0], chunk.key_from):
            return False
        if not _is_pairs(items, digests=True) or len(items) > self.max_keys_per_message:
            return False
        positions = [(self.tree.leaf_of(k), k) for k, _ in items]
        if not all(chunk.contains(*p) for p in positions) or not _ascending(positions):
            return False
        r.step = msg.step
        r.leaves_seen.update(leaves)
        # Compare at most max_keys_per_message of our own keys; if we hold more, stop before the next one.
        own: list[str] = []
        until: tuple[int, str] | None = None
        for leaf in leaves:
            first = chunk.key_from if leaf == leaves[0] else ""
            last = chunk.key_to if leaf == leaves[-1] else None
            for key in self.tree.sorted_keys_in(leaf, first, last):
                if len(own) == self.max_keys_per_message:
                    until = (leaf, key)
                    break
                own.append(key)
            if until is not None:
                break
        compared = chunk.cut(until)
        theirs = {k: d for k, d in items if compared.contains(self.tree.leaf_of(k), k)}
        own_set = set(own)
        mine = {k: key_digest(k, s) for k, s in states(own).items() if k in own_set}
        want = tuple(k for k, d in theirs.items() if mine.get(k) != d)
        r.chunk = compared
        r.wanted = set(want)
        r.owed = deque(k for k in own if k in mine and theirs.get(k) != mine[k])
        batch = self._take_owed(r, states)
        msg_out = AeDiff(r.session, r.step + 1, until, want, batch, bool(r.owed))
        out.sends.append(self._send(r, msg_out))
        return True

    # --- states, both sides ------------------------------------------------------------------------------

    def _on_states(self, r: _Round, msg: AeStates, out: AeStep, states: States) -> bool:
        chunk = r.chunk
        if chunk is None or type(msg.more) is not bool:
            return False
        if r.driver:
            if not self._states_in(msg.states, chunk):
                return False
        else:
            if not _is_pairs(msg.states, digests=False) or len(msg.states) > self.max_keys_per_message:
                return False
            keys = [k for k, _ in msg.states]
            if len(set(keys)) != len(keys) or not set(keys) <= r.wanted:
                return False
            r.wanted.difference_update(keys)
        r.step = msg.step
        self._receive_states(r, msg.states, msg.more, out)
        if r.driver:
            self._drive(r, out, states)
        else:
            out.sends.append(self._send(r, self._states_message(r, states)))
        return True

    def _states_in(self, states: object, chunk: _Chunk) -> bool:
        """Whether ``states`` are well-formed, few enough, one per key, and all of keys inside ``chunk``."""
        if not _is_pairs(states, digests=False):
            return False
        assert isinstance(states, tuple)
        keys = [k for k, _ in states]
        if len(keys) > self.max_keys_per_message or len(set(keys)) != len(keys):
            return False
        return all(chunk.contains(self.tree.leaf_of(k), k) for k in keys)

    def _receive_states(self, r: _Round, states: tuple[tuple[str, bytes], ...], more: bool, out: AeStep) -> None:
        out.merge.extend(states)
        r.keys_received += len(states)
        # A peer that claims more but sent nothing would keep the round going forever.
        r.peer_more = more and bool(states)

    def _states_message(self, r: _Round, states: States) -> AeStates:
        batch = self._take_owed(r, states)
        return AeStates(r.session, r.step + 1, batch, bool(r.owed))

    def _take_owed(self, r: _Round, states: States) -> tuple[tuple[str, bytes], ...]:
        """The next owed states that fit a message (at least one: a state larger than the limit goes alone)."""
        keys = [r.owed.popleft() for _ in range(min(len(r.owed), self.max_keys_per_message))]
        found = states(keys)
        batch: list[tuple[str, bytes]] = []
        size = 0
        for index, key in enumerate(keys):
            if key not in found:
                continue  # gone since: the peer's copy is not ours to judge, and it sends its own
            cost = len(_key_bytes(key)) + len(found[key])
            if batch and size + cost > self.max_bytes_per_message:
                r.owed.extendleft(reversed(keys[index:]))
                break
            batch.append((key, found[key]))
            size += cost
        r.keys_sent += len(batch)
        return tuple(batch)

    # --- bookkeeping -------------------------------------------------------------------------------------

    def _send(self, r: _Round, msg: object) -> Send:
        r.step += 1
        r.bytes_sent += _payload_bytes(msg)
        if isinstance(msg, AeKeys) or (isinstance(msg, AeStates) and r.driver):
            r.expect = (AeDiff,) if isinstance(msg, AeKeys) else (AeStates,)
        else:
            r.expect = (AeHashes, AeKeys, AeStates, AeDone)
        return (r.peer, msg)

    def _send_and_finish(self, r: _Round, out: AeStep) -> None:
        out.sends.append(self._send(r, AeDone(r.session, r.step + 1)))
        self._finish(r, out)

    def _finish(self, r: _Round, out: AeStep) -> None:
        self._forget(r)
        out.finished = r.stats()

    def _forget(self, r: _Round) -> None:
        if r.initiator:
            self._own = None
        elif self._answering.pop((r.peer, r.session), None) is not None:
            self._answered.append((r.peer, r.session))

    def _on_abort(self, src: str, msg: AeAbort) -> None:
        if type(msg.by_initiator) is not bool or not _is_int(msg.session):
            return
        r = self._answering.get((src, msg.session)) if msg.by_initiator else self._own
        if r is not None and r.peer == src and r.session == msg.session:
            self._forget(r)
