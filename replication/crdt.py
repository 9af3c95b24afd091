"""CRDT conflict policies of leaderless mode: ``counter``, ``set`` and ``map`` keys merge instead of branching.

A CRDT key's ``Versions`` holds at most one sibling. Its value is the data type's state (canonical msgpack with
the type's name first, so equal states are equal bytes and a state of one type is never read as another), its
dot is the largest, by ``(counter, node)``, of the writes merged in, and the context covers every write merged
in. A write's value is an *operation* (JSON), applied by the coordinator to its own state of the key; replicas
then converge by ``merge``, a join (commutative, associative, idempotent) of the two states and their contexts:

- ``counter``: a PN-counter: per node the totals it added and subtracted, merged by maximum. A DELETE is an
  *observed reset*: each node's totals the coordinator saw become that node's floor (also merged by maximum),
  and the value is the sum of what lies above the floors, so increments concurrent with the reset survive.
  The floors must outlive the reset (a concurrent increment carries the node's older total in its own), so a
  reset counter reads 0 and is never a tombstone.
- ``set``: an add-wins observed-remove set with a causal context (Bieniusa et al.'s optimized OR-set): an add
  tags the element with the write's dot (and drops the element's older tags it saw); a remove drops the tags
  the coordinator holds. Merge keeps a tag both sides hold, or one the other side has not seen (its context
  does not cover the dot): a tag missing from a side that saw it was removed there. No remove leaves a
  marker, so a set emptied by a remove or a DELETE is a tombstone (value None) the replica may purge.
- ``map``: per field a last-writer-wins register ordered by ``(stamp_ms, dot)``; removing a field writes a
  stamped tombstone register, so merge (the larger register per field) is a join. A write stamps a field
  ``max(timestamp_ms, stamp it overwrites + 1)``: a write always supersedes the field value its coordinator
  held, whatever the clocks say; only concurrent writes are ordered by (possibly skewed) clocks.

The context only ever covers dots whose effects the state holds; the client's read context (``seen``) is not
merged in, because the set would take a dot the context covers but the state lacks for a removed tag. Like
``dvv.update``, this relies on a coordinator's state holding every write it coordinated for the key.

A malformed operation raises ValueError with a message for the client; so does a stored or peer state that is
not a canonical state of the policy's type (it is untrusted bytes), in ``write``, ``merge`` and ``render``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import msgpack

from replication.conflict import ConflictPolicy
from replication.dvv import MAX_CONTEXT_NODES, MAX_NODE_ID_CHARS, Dot, Sibling, Versions
from replication.vclock import VectorClock

CRDT_TYPES = ("counter", "set", "map")

# Bounds of a client's operation.
MAX_OP_BYTES = 64 * 1024
MAX_OP_ITEMS = 1000
MAX_STRING_BYTES = 1024
# A write that would leave more entries (set elements, map fields and field tombstones) is refused. A merge of
# several coordinators' concurrent writes can hold more; decoding accepts up to MAX_DECODED_ENTRIES.
MAX_ENTRIES = 10_000
MAX_DECODED_ENTRIES = 100_000
_INT64_MAX = (1 << 63) - 1

S = TypeVar("S")


class _Tally(NamedTuple):
    """One node's share of a counter: its totals, and the part of each an observed reset removed."""

    up: int
    down: int
    up_floor: int
    down_floor: int

    @property
    def value(self) -> int:
        return (self.up - self.up_floor) - (self.down - self.down_floor)


class _Register(NamedTuple):
    """One map field: its value (None: removed) and the stamp and dot that order it against others."""

    stamp_ms: int
    dot: Dot
    value: str | None


CounterState = dict[str, _Tally]
SetState = dict[str, frozenset[Dot]]
MapState = dict[str, _Register]


class CrdtPolicy(ABC, Generic[S]):
    """What every CRDT type shares: a key's ``Versions`` as one sibling holding the type's state ``S``."""

    name: str

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        current, context = self._open(state)
        node, counter = dot
        if counter <= context.get(node):
            raise ValueError(f"dot {dot} is not above the counter of {node} the state holds")
        if value is None:
            updated = self._reset(current, dot, timestamp_ms)
        else:
            updated = self._apply(current, value, dot, timestamp_ms)
            if self._size(updated) > MAX_ENTRIES:
                raise ValueError(f"the {self.name} would hold more than {MAX_ENTRIES} entries: remove some first")
        context = context.merge(VectorClock.of({node: counter}))
        return Versions((Sibling(dot, self._encode(updated), timestamp_ms),), context)

    def merge(self, a: Versions, b: Versions) -> Versions:
        state_a, context_a = self._open(a)
        state_b, context_b = self._open(b)
        joined = self._join(state_a, context_a, state_b, context_b)
        context = context_a.merge(context_b)
        newest = max((*a.siblings, *b.siblings), key=_sibling_order, default=None)
        if newest is None:
            return Versions((), context)
        return Versions((Sibling(newest.dot, self._encode(joined), newest.timestamp_ms),), context)

    def value_of(self, state: Versions | None) -> object:
        """The JSON value a read returns (``render``'s, before encoding)."""
        current, _ = self._open(state)
        return self._to_json(current)

    def _open(self, state: Versions | None) -> tuple[S, VectorClock]:
        if state is None:
            return self._from_raw([], VectorClock()), VectorClock()
        if len(state.siblings) > 1:
            raise ValueError(
                f"a {self.name} key holds one value, this state has {len(state.siblings)} "
                f"(was it written under another policy?)"
            )
        value = state.siblings[0].value if state.siblings else None
        if value is None:
            return self._from_raw([], state.context), state.context
        name, raw = _unpack_state(value)
        if name != self.name:
            raise ValueError(f"the key holds a {name} state, not a {self.name} (was its policy changed?)")
        decoded = self._from_raw(raw, state.context)
        # One encoding per state (sorted, unique, minimal, an empty state stored as no value), so replicas
        # holding equal states hold equal bytes, which anti-entropy compares.
        if self._encode(decoded) != value:
            raise ValueError(f"not a canonical {self.name} state")
        return decoded, state.context

    def _encode(self, state: S) -> bytes | None:
        if not self._size(state):
            return None
        return msgpack.packb([self.name, self._to_raw(state)], use_bin_type=True)

    @abstractmethod
    def _apply(self, state: S, op: bytes, dot: Dot, timestamp_ms: int) -> S:
        """``state`` after the client's operation ``op`` (JSON), coordinated with ``dot``; ValueError if malformed."""

    @abstractmethod
    def _reset(self, state: S, dot: Dot, timestamp_ms: int) -> S:
        """``state`` after a DELETE of the key: everything it holds removed."""

    @abstractmethod
    def _join(self, a: S, context_a: VectorClock, b: S, context_b: VectorClock) -> S: ...

    @abstractmethod
    def _size(self, state: S) -> int: ...

    @abstractmethod
    def _to_raw(self, state: S) -> list[list[object]]: ...

    @abstractmethod
    def _from_raw(self, raw: object, context: VectorClock) -> S:
        """The state ``_to_raw`` made; ValueError for a wrong shape or a value out of range."""

    @abstractmethod
    def _to_json(self, state: S) -> object: ...


@dataclass(frozen=True)
class CounterPolicy(CrdtPolicy[CounterState]):
    """Op ``{"increment": <int>}`` (negative: a decrement); reads as the integer."""

    name: str = "counter"

    def _apply(self, state: CounterState, op: bytes, dot: Dot, timestamp_ms: int) -> CounterState:
        fields = _parse_op(op, self.name, required=("increment",), optional=())
        amount = fields["increment"]
        if type(amount) is not int or abs(amount) > _INT64_MAX:
            raise ValueError(f"increment must be an integer between -{_INT64_MAX} and {_INT64_MAX}")
        node = dot[0]
        tally = state.get(node, _Tally(0, 0, 0, 0))
        tally = tally._replace(up=tally.up + max(amount, 0), down=tally.down + max(-amount, 0))
        if max(tally.up, tally.down) > _INT64_MAX:
            raise ValueError(f"the counter's total through node {node} would pass {_INT64_MAX}")
        updated = dict(state)
        if tally.up or tally.down:
            updated[node] = tally
        return updated

    def _reset(self, state: CounterState, dot: Dot, timestamp_ms: int) -> CounterState:
        return {node: t._replace(up_floor=t.up, down_floor=t.down) for node, t in state.items()}

    def _join(self, a: CounterState, context_a: VectorClock, b: CounterState, context_b: VectorClock) -> CounterState:
        joined = dict(a)
        for node, theirs in b.items():
            mine = joined.get(node)
            joined[node] = theirs if mine is None else _Tally(*(max(x, y) for x, y in zip(mine, theirs, strict=True)))
        return joined

    def _size(self, state: CounterState) -> int:
        return len(state)

    def _to_raw(self, state: CounterState) -> list[list[object]]:
        return [[node, *state[node]] for node in sorted(state)]

    def _from_raw(self, raw: object, context: VectorClock) -> CounterState:
        entries = _entries(raw, 5, limit=MAX_CONTEXT_NODES)
        state: CounterState = {}
        for node, *numbers in entries:
            tally = _Tally(*(_int64(n, "a counter total") for n in numbers))
            if tally.up_floor > tally.up or tally.down_floor > tally.down or not (tally.up or tally.down):
                raise ValueError("a counter's node entry: floors above totals, or all zero")
            state[_node(node)] = tally
        return state

    def _to_json(self, state: CounterState) -> object:
        return sum(t.value for t in state.values())


@dataclass(frozen=True)
class SetPolicy(CrdtPolicy[SetState]):
    """Op ``{"add": [<str>...], "remove": [<str>...]}``; reads as the sorted list of elements."""

    name: str = "set"

    def _apply(self, state: SetState, op: bytes, dot: Dot, timestamp_ms: int) -> SetState:
        fields = _parse_op(op, self.name, required=(), optional=("add", "remove"))
        added = _strings(fields.get("add", []), "add")
        removed = _strings(fields.get("remove", []), "remove")
        _check_op_items(len(added) + len(removed))
        both = added & removed
        if both:
            raise ValueError(f"an op cannot both add and remove an element: {sorted(both)[0]!r}")
        updated = {element: tags for element, tags in state.items() if element not in removed}
        # An add replaces the element's tags it saw: the context now covers them, so merge drops them elsewhere.
        updated.update((element, frozenset((dot,))) for element in added)
        return updated

    def _reset(self, state: SetState, dot: Dot, timestamp_ms: int) -> SetState:
        return {}

    def _join(self, a: SetState, context_a: VectorClock, b: SetState, context_b: VectorClock) -> SetState:
        joined: SetState = {}
        for element in a.keys() | b.keys():
            mine, theirs = a.get(element, frozenset()), b.get(element, frozenset())
            tags = (mine & theirs) | _unseen(mine, context_b) | _unseen(theirs, context_a)
            if tags:
                joined[element] = tags
        return joined

    def _size(self, state: SetState) -> int:
        return len(state)

    def _to_raw(self, state: SetState) -> list[list[object]]:
        return [[element, [[n, c] for n, c in sorted(state[element])]] for element in sorted(state)]

    def _from_raw(self, raw: object, context: VectorClock) -> SetState:
        state: SetState = {}
        for element, tags_raw in _entries(raw, 2, limit=MAX_DECODED_ENTRIES):
            tags = [_dot(tag, context) for tag in _entries(tags_raw, 2, limit=MAX_CONTEXT_NODES)]
            if not tags:
                raise ValueError("a set element without tags")
            state[_string(element, "a set element")] = frozenset(tags)
        return state

    def _to_json(self, state: SetState) -> object:
        return sorted(state)


@dataclass(frozen=True)
class MapPolicy(CrdtPolicy[MapState]):
    """Op ``{"set": {<field>: <str>}, "remove": [<field>...]}``; reads as the object of live fields."""

    name: str = "map"

    def _apply(self, state: MapState, op: bytes, dot: Dot, timestamp_ms: int) -> MapState:
        fields = _parse_op(op, self.name, required=(), optional=("set", "remove"))
        assigned = fields.get("set", {})
        if not isinstance(assigned, dict):
            raise ValueError('"set" must be an object of field: string')
        removed = _strings(fields.get("remove", []), "remove")
        _check_op_items(len(assigned) + len(removed))
        changes: dict[str, str | None] = dict.fromkeys(removed)
        for field, value in assigned.items():
            if field in changes:
                raise ValueError(f"an op cannot both set and remove a field: {field!r}")
            changes[_string(field, "a field name")] = _string(value, f"the value of field {field!r}")
        updated = dict(state)
        for field, value in changes.items():
            updated[field] = _Register(_stamp_over(state.get(field), timestamp_ms), dot, value)
        return updated

    def _reset(self, state: MapState, dot: Dot, timestamp_ms: int) -> MapState:
        updated = dict(state)
        for field, register in state.items():
            if register.value is not None:
                updated[field] = _Register(_stamp_over(register, timestamp_ms), dot, None)
        return updated

    def _join(self, a: MapState, context_a: VectorClock, b: MapState, context_b: VectorClock) -> MapState:
        joined = dict(a)
        for field, theirs in b.items():
            mine = joined.get(field)
            if mine is None or _register_order(theirs) > _register_order(mine):
                joined[field] = theirs
        return joined

    def _size(self, state: MapState) -> int:
        return len(state)

    def _to_raw(self, state: MapState) -> list[list[object]]:
        return [[f, r.stamp_ms, r.dot[0], r.dot[1], r.value] for f, r in sorted(state.items())]

    def _from_raw(self, raw: object, context: VectorClock) -> MapState:
        state: MapState = {}
        for field, stamp_ms, node, counter, value in _entries(raw, 5, limit=MAX_DECODED_ENTRIES):
            text = None if value is None else _string(value, "a field's value")
            register = _Register(_int64(stamp_ms, "a field's stamp"), _dot([node, counter], context), text)
            state[_string(field, "a field name")] = register
        return state

    def _to_json(self, state: MapState) -> object:
        return {field: r.value for field, r in sorted(state.items()) if r.value is not None}


_POLICIES: dict[str, CrdtPolicy[CounterState] | CrdtPolicy[SetState] | CrdtPolicy[MapState]] = {
    "counter": CounterPolicy(),
    "set": SetPolicy(),
    "map": MapPolicy(),
}


def policy_named(name: str) -> ConflictPolicy:
    """The CRDT policy ``name`` (one of ``CRDT_TYPES``); ValueError for any other name."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown CRDT type {name!r}: expected one of {', '.join(CRDT_TYPES)}") from None


def render(state: Versions | None) -> bytes:
    """The JSON a read of a CRDT key returns: a counter's integer, a set's sorted elements, a map's live fields.
    ``null`` for a key without a value (none stored, or a tombstone), which a node answers as not found."""
    if state is None or not state.values:
        return b"null"
    name, _ = _unpack_state(state.values[0])
    policy = _POLICIES.get(name)
    if policy is None:
        raise ValueError(f"not a CRDT state: unknown type {name!r}")
    return json.dumps(policy.value_of(state), ensure_ascii=False, separators=(",", ":")).encode()


# ---------------------------------------------------------------- merge helpers


def _sibling_order(sibling: Sibling) -> tuple[int, str, int]:
    return (sibling.dot[1], sibling.dot[0], sibling.timestamp_ms)


def _unseen(tags: frozenset[Dot], context: VectorClock) -> frozenset[Dot]:
    return frozenset(tag for tag in tags if context.get(tag[0]) < tag[1])


def _register_order(register: _Register) -> tuple[int, Dot, bool, str]:
    # Two registers with one dot are one write; the value only breaks ties between states no write made.
    return (register.stamp_ms, register.dot, register.value is not None, register.value or "")


def _stamp_over(register: _Register | None, timestamp_ms: int) -> int:
    stamp_ms = timestamp_ms if register is None else max(timestamp_ms, register.stamp_ms + 1)
    if stamp_ms > _INT64_MAX:
        raise ValueError(f"the field's stamp would pass {_INT64_MAX}")
    return stamp_ms


# ---------------------------------------------------------------- operations (client JSON)


def _parse_op(op: bytes, type_name: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, object]:
    if len(op) > MAX_OP_BYTES:
        raise ValueError(f"a {type_name} op is at most {MAX_OP_BYTES} bytes of JSON, this one has {len(op)}")
    try:
        parsed = json.loads(op.decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except RecursionError:
        raise ValueError(f"a {type_name} op is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"a {type_name} op must be a JSON object: {exc}") from None
    allowed = (*required, *optional)
    expected = ", ".join(f'"{name}"' for name in allowed)
    if not isinstance(parsed, dict):
        raise ValueError(f"a {type_name} op must be a JSON object with {expected}")
    unknown = sorted(parsed.keys() - set(allowed))
    if unknown:
        raise ValueError(f"a {type_name} op has unknown field {unknown[0]!r}: expected {expected}")
    missing = [name for name in required if name not in parsed]
    if missing:
        raise ValueError(f"a {type_name} op needs {expected}")
    if not parsed:
        raise ValueError(f"a {type_name} op needs at least one of {expected}")
    return parsed


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object names a field twice")
    return result


def _strings(raw: object, what: str) -> set[str]:
    if not isinstance(raw, list):
        raise ValueError(f'"{what}" must be a list of strings')
    _check_op_items(len(raw))
    return {_string(item, f'an element of "{what}"') for item in raw}


def _check_op_items(count: int) -> None:
    if count > MAX_OP_ITEMS:
        raise ValueError(f"an op names at most {MAX_OP_ITEMS} elements or fields, this one {count}")


# ---------------------------------------------------------------- states (untrusted msgpack)


def _unpack_state(data: bytes) -> tuple[str, object]:
    try:
        # unpackb bounds every container by the input's length; a state holds no msgpack maps.
        raw = msgpack.unpackb(data, raw=False, use_list=True, max_map_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an encoded CRDT state: {exc}") from None
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str):
        raise ValueError("not an encoded CRDT state: expected [type, entries]")
    return raw[0], raw[1]


def _entries(raw: object, width: int, *, limit: int) -> Iterable[list[object]]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise ValueError(f"not a CRDT state: expected a list of at most {limit} entries")
    for item in raw:
        if not isinstance(item, list) or len(item) != width:
            raise ValueError(f"not a CRDT state: expected entries of {width} items")
    return raw


def _string(raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"{what} must be a string")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    if size > MAX_STRING_BYTES:
        raise ValueError(f"{what} is at most {MAX_STRING_BYTES} bytes of UTF-8, this one has {size}")
    return raw


def _node(raw: object) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_NODE_ID_CHARS:
        raise ValueError(f"not a CRDT state: a node id has 1 to {MAX_NODE_ID_CHARS} characters")
    return raw


def _dot(raw: list[object], context: VectorClock) -> Dot:
    node, counter = raw
    dot = (_node(node), _int64(counter, "a dot's counter"))
    if not 0 < dot[1] <= context.get(dot[0]):
        raise ValueError(f"not a CRDT state: dot {dot} is not covered by the key's context")
    return dot


def _int64(raw: object, what: str) -> int:
    if type(raw) is not int or not 0 <= raw <= _INT64_MAX:
        raise ValueError(f"not a CRDT state: {what} must be a non-negative 64-bit integer")
    return raw
