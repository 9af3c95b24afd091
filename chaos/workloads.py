"""Seeded client workloads: what each process asks for, and how that maps onto the key-value API.

A workload plans ops (``PlannedOp``: the history's ``f``, ``key`` and ``value``) and executes each as a
generator that yields client operations and receives their results, returning the op's outcome
(``ok``/``fail``/``info``, the value, an error). The same generator is driven by the simulator runner
and by the real-cluster runner, so both record the same kind of history.

- ``register``: read / write / cas over a few keys; every written value is unique. In leaderless mode (options
  ``r``, ``w``: quorums; ``consistency = "linearizable"``: ABD; ``cas_fraction = 0``, CAS is refused there) a
  write is blind (no context: a register's write replaces the value rather than resolving siblings) and a read
  records its one value. Under the ``lww`` policy or ABD a read has at most one; under ``siblings`` a read that
  returns several records them as a sorted tuple, which no write wrote: the linearizability checker rejects it,
  as it must (a register that answers two values is not a register), and the lost-writes checker sees a read that
  names no single write.
- ``append``: string append (read, then cas until it lands), for read-after-append checks.
- ``set``: add unique elements (each a key under the set's prefix), read = a scan of the prefix.
- ``counter``: increments (read, then cas until it lands), read = get.
- ``siblings`` (leaderless mode): the history ``chaos.checkers.siblings`` documents. Reads return every sibling
  (recorded sorted). A write writes a new unique value with the causal context of the latest read of its key that
  completed (any process's: a context is a client's to pass on), and records that read's siblings as ``saw``; a
  ``blind_fraction`` of the writes, and every write to a key nobody has read yet, sends no context (``saw`` empty)
  and adds a sibling. Its final state is each replica's siblings read from the replicas' stores
  (``final_siblings``), not through the API.

Composite ops (append, counter add) stop at the first indefinite step and report ``info``: retrying
after an attempt that may have landed could apply the op twice.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvstore.messages import (
    CasOp,
    ClientOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    FoundSiblings,
    GetOp,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    Stored,
    Written,
)
from kvstore.sim.draws import below, between
from kvstore.validation import prefix_range

Outcome = tuple[str, Any, str | None]  # (type, value, error)
Execution = Generator[ClientOp, Result, Outcome]

WORKLOAD_KINDS: tuple[str, ...] = ("register", "append", "set", "counter")
# Workloads only leaderless mode serves (they read siblings and write with causal contexts).
LEADERLESS_WORKLOAD_KINDS: tuple[str, ...] = ("siblings",)
ALL_WORKLOAD_KINDS: tuple[str, ...] = (*WORKLOAD_KINDS, *LEADERLESS_WORKLOAD_KINDS)
# A composite op gives up (a definite fail) after this many refused cas attempts.
MAX_CAS_ATTEMPTS = 16
SCAN_PAGE = 1000


@dataclass(frozen=True, init=False)
class PlannedOp:
    f: str
    key: str | None
    value: Any

    def __init__(self, f: str, key: str | None, value: Any) -> None:
        # Fills the instance dict, as chaos.history.Event does: the frozen dataclass __init__ sets each
        # field through object.__setattr__, 0.3 us more, for every op a run plans. Still read-only.
        fields = self.__dict__
        fields["f"] = f
        fields["key"] = key
        fields["value"] = value


class Workload(Protocol):
    kind: str
    default_checkers: tuple[str, ...]

    def next_op(self, rng: random.Random) -> PlannedOp:
        ...

    def final_ops(self) -> list[PlannedOp]:
        """Ops every run ends with, after the faults heal (e.g. the final read of a set)."""
        ...

    def execute(self, op: PlannedOp) -> Execution:
        ...


def _failed(result: Failure) -> Outcome:
    """A failure's place in the history: definite errors did not happen, the rest may have."""
    return ("fail" if result.error_code.definite else "info"), None, result.code


def _read_value(key: str, decode: Any, read: GetOp | None = None) -> Generator[ClientOp, Result, Outcome]:
    result = yield (read or GetOp(key))
    if isinstance(result, Found):
        return "ok", decode(result.value), None
    if isinstance(result, FoundSiblings):
        # Leaderless mode: no value, one, or several siblings (a sorted tuple: no single write made it).
        values = sorted(decode(v) for v in result.values)
        return "ok", (None if not values else values[0] if len(values) == 1 else tuple(values)), None
    if isinstance(result, Failure) and result.code == "not_found":
        return "ok", None, None
    assert isinstance(result, Failure), f"unexpected reply to a get: {result!r}"
    return _failed(result)


def _cas_loop(key: str, update: Any, encode: Any, decode: Any) -> Generator[ClientOp, Result, Outcome]:
    """Read, then cas the updated value, until a cas lands; ``update(old) -> new`` on decoded values."""
    for _ in range(MAX_CAS_ATTEMPTS):
        got = yield GetOp(key)
        if isinstance(got, Found):
            old_bytes: bytes | None = got.value
        elif isinstance(got, Failure) and got.code == "not_found":
            old_bytes = None
        else:
            assert isinstance(got, Failure)
            return "fail", None, got.code  # nothing was written yet, whatever the read's error
        new_bytes = encode(update(None if old_bytes is None else decode(old_bytes)))
        result = yield CasOp(key, old_bytes, new_bytes)
        if isinstance(result, Written):
            return "ok", None, None
        assert isinstance(result, Failure), f"unexpected reply to a cas: {result!r}"
        if result.code != "precondition_failed":
            return _failed(result)
    return "fail", None, "too_much_contention"


def _int(data: bytes) -> int:
    return int(data.decode("ascii"))


def _text(data: bytes) -> str:
    return data.decode("utf-8")


class RegisterWorkload:
    kind = "register"
    default_checkers: tuple[str, ...] = ("linearizable", "lost-writes")
    CAS_FRACTION = 0.2

    def __init__(
        self, keys: int = 5, read_fraction: float = 0.5, cas_fraction: float = CAS_FRACTION,
        delete_fraction: float = 0.0, r: str | int = "", w: str | int = "", consistency: str = "",
    ) -> None:
        if not 0 <= read_fraction + cas_fraction + delete_fraction <= 1:
            raise ValueError("register workload: read, cas and delete fractions must add up to at most 1")
        # Leaderless mode: the quorums ("": the cluster's) and "linearizable" for ABD reads and writes.
        self.r, self.w = str(r), str(w)
        self.consistency = consistency
        self.keys = [f"r{i}" for i in range(keys)]
        self.read_fraction = read_fraction
        self.cas_fraction = cas_fraction
        # Deletes make keys come and go (range mode merges ranges that empty); the checkers know "delete".
        self.delete_fraction = delete_fraction
        self._next_value = 1
        self._last_planned: dict[str, int] = {}

    def next_op(self, rng: random.Random) -> PlannedOp:
        key = self.keys[below(rng, len(self.keys))]  # rng.choice's draw, in one call
        roll = rng.random()
        if roll < self.read_fraction:
            return PlannedOp("read", key, None)
        if roll >= 1 - self.delete_fraction:
            self._last_planned.pop(key, None)
            return PlannedOp("delete", key, None)
        value = self._next_value
        self._next_value += 1
        if roll < self.read_fraction + self.cas_fraction:
            # Expect the value most recently planned for the key, so that some cas ops succeed.
            expected = self._last_planned.get(key)
            self._last_planned[key] = value
            return PlannedOp("cas", key, (expected, value))
        self._last_planned[key] = value
        return PlannedOp("write", key, value)

    def final_ops(self) -> list[PlannedOp]:
        return [PlannedOp("read", key, None) for key in self.keys]

    def execute(self, op: PlannedOp) -> Execution:
        assert op.key is not None
        store_key = f"register/{op.key}"
        if op.f == "read":
            return (yield from _read_value(store_key, _int, GetOp(store_key, self.consistency, r=self.r)))
        if op.f == "delete":
            deleted = yield DeleteOp(store_key, w=self.w, consistency=self.consistency)
            if isinstance(deleted, Deleted | Stored) or (isinstance(deleted, Failure) and deleted.code == "not_found"):
                return "ok", None, None
            assert isinstance(deleted, Failure), f"unexpected reply to a delete: {deleted!r}"
            return _failed(deleted)
        if op.f == "write":
            result = yield PutOp(store_key, str(op.value).encode(), w=self.w, consistency=self.consistency)
        else:
            expected, new = op.value
            result = yield CasOp(store_key, None if expected is None else str(expected).encode(), str(new).encode())
        if isinstance(result, Written | Stored):
            return "ok", op.value, None
        assert isinstance(result, Failure), f"unexpected reply: {result!r}"
        return _failed(result)


class AppendWorkload:
    kind = "append"
    default_checkers: tuple[str, ...] = ("linearizable",)

    def __init__(self, keys: int = 3, read_fraction: float = 0.4) -> None:
        self.keys = [f"a{i}" for i in range(keys)]
        self.read_fraction = read_fraction
        self._next_value = 1

    def next_op(self, rng: random.Random) -> PlannedOp:
        key = self.keys[below(rng, len(self.keys))]  # rng.choice's draw, in one call
        if rng.random() < self.read_fraction:
            return PlannedOp("read", key, None)
        value = f"{self._next_value},"
        self._next_value += 1
        return PlannedOp("append", key, value)

    def final_ops(self) -> list[PlannedOp]:
        return [PlannedOp("read", key, None) for key in self.keys]

    def execute(self, op: PlannedOp) -> Execution:
        assert op.key is not None
        store_key = f"append/{op.key}"
        if op.f == "read":
            return (yield from _read_value(store_key, _text))
        suffix: str = op.value
        outcome = yield from _cas_loop(store_key, lambda old: (old or "") + suffix, str.encode, _text)
        return outcome[0], op.value, outcome[2]


class SetWorkload:
    kind = "set"
    default_checkers: tuple[str, ...] = ("set",)

    def __init__(self, read_fraction: float = 0.1, key: str = "s") -> None:
        self.key = key
        self.read_fraction = read_fraction
        self._next_element = 1

    def next_op(self, rng: random.Random) -> PlannedOp:
        if rng.random() < self.read_fraction:
            return PlannedOp("read", self.key, None)
        element = self._next_element
        self._next_element += 1
        return PlannedOp("add", self.key, element)

    def final_ops(self) -> list[PlannedOp]:
        return [PlannedOp("read", self.key, None)]

    def execute(self, op: PlannedOp) -> Execution:
        prefix = f"set/{op.key}/"
        if op.f == "add":
            result = yield PutOp(f"{prefix}{op.value:010d}", b"1")
            if isinstance(result, Written):
                return "ok", op.value, None
            assert isinstance(result, Failure), f"unexpected reply: {result!r}"
            return _failed(result)
        start, end = prefix_range(prefix)
        elements: list[int] = []
        while True:
            page = yield ScanOp(start, end, SCAN_PAGE)
            if isinstance(page, Failure):
                return "fail", None, page.code  # a read changes nothing: never indefinite
            assert isinstance(page, ScanPage), f"unexpected reply to a scan: {page!r}"
            elements.extend(int(item.key[len(prefix) :]) for item in page.items)
            if not page.truncated or not page.items:
                return "ok", sorted(elements), None
            start = page.items[-1].key + "\0"


class CounterWorkload:
    kind = "counter"
    default_checkers: tuple[str, ...] = ("counter",)

    def __init__(self, read_fraction: float = 0.2, max_delta: int = 5, key: str = "c") -> None:
        self.key = key
        self.read_fraction = read_fraction
        self.max_delta = max_delta

    def next_op(self, rng: random.Random) -> PlannedOp:
        if rng.random() < self.read_fraction:
            return PlannedOp("read", self.key, None)
        return PlannedOp("add", self.key, between(rng, 1, self.max_delta))

    def final_ops(self) -> list[PlannedOp]:
        return [PlannedOp("read", self.key, None)]

    def execute(self, op: PlannedOp) -> Execution:
        store_key = f"counter/{op.key}"
        if op.f == "read":
            outcome = yield from _read_value(store_key, _int)
            return outcome if outcome[0] != "ok" or outcome[1] is not None else ("ok", 0, None)
        delta: int = op.value
        outcome = yield from _cas_loop(store_key, lambda old: (old or 0) + delta, lambda v: str(v).encode(), _int)
        return outcome[0], op.value, outcome[2]


class SiblingsWorkload:
    kind = "siblings"
    default_checkers: tuple[str, ...] = ("siblings", "convergence")
    PREFIX = "siblings/"

    def __init__(self, keys: int = 5, read_fraction: float = 0.4, blind_fraction: float = 0.1,
                 r: str | int = "", w: str | int = "") -> None:
        if not (0 <= read_fraction <= 1 and 0 <= blind_fraction <= 1) or keys < 1:
            raise ValueError("siblings workload: keys must be positive, read and blind fractions between 0 and 1")
        self.keys = [f"k{i}" for i in range(keys)]
        self.read_fraction = read_fraction
        self.blind_fraction = blind_fraction
        self.r, self.w = str(r), str(w)
        self._next_value = 1
        # Per key, the siblings and the context of the latest read that completed (one entry per key).
        self._last_read: dict[str, tuple[list[int], bytes]] = {}
        # The context each planned write sends, until it runs (planned ops run at once: a handful at most).
        self._contexts: dict[int, bytes] = {}

    def next_op(self, rng: random.Random) -> PlannedOp:
        key = self.keys[below(rng, len(self.keys))]
        if rng.random() < self.read_fraction:
            return PlannedOp("read", key, None)
        value = self._next_value
        self._next_value += 1
        saw, context = self._last_read.get(key, ([], b""))
        if rng.random() < self.blind_fraction:
            saw, context = [], b""
        self._contexts[value] = context
        return PlannedOp("write", key, {"value": value, "saw": saw})

    def final_ops(self) -> list[PlannedOp]:
        return [PlannedOp("read", key, None) for key in self.keys]

    def execute(self, op: PlannedOp) -> Execution:
        assert op.key is not None
        store_key = self.PREFIX + op.key
        if op.f == "read":
            result = yield GetOp(store_key, r=self.r)
            if isinstance(result, FoundSiblings):
                values = sorted(_int(v) for v in result.values)
                self._last_read[op.key] = (values, result.context)
                return "ok", values, None
            assert isinstance(result, Failure), f"unexpected reply to a get: {result!r}"
            return "fail", None, result.code  # a read changes nothing: never indefinite
        value = op.value["value"]
        context = self._contexts.pop(value)
        result = yield PutOp(store_key, str(value).encode(), w=self.w, context=context)
        if isinstance(result, Stored):
            return "ok", op.value, None
        assert isinstance(result, Failure), f"unexpected reply to a put: {result!r}"
        return _failed(result)

    def final_siblings(self, stored: Mapping[str, Mapping[str, Sequence[bytes]]]) -> dict[str, dict[str, list[int]]]:
        """The siblings checker's final state (``{key: {node: [values]}}``) from each replica's live siblings of
        each store key (``chaos.final_siblings.replica_siblings``); every key of the workload is in it."""
        final: dict[str, dict[str, list[int]]] = {key: {} for key in self.keys}
        for store_key, by_node in stored.items():
            if store_key.startswith(self.PREFIX):
                final[store_key[len(self.PREFIX):]] = {node: [_int(v) for v in vs] for node, vs in by_node.items()}
        return final


def make_workload(kind: str, options: dict[str, Any]) -> Workload:
    factories: dict[str, type] = {
        "register": RegisterWorkload,
        "append": AppendWorkload,
        "set": SetWorkload,
        "counter": CounterWorkload,
        "siblings": SiblingsWorkload,
    }
    factory = factories.get(kind)
    if factory is None:
        raise ValueError(f"workload kind must be one of {', '.join(ALL_WORKLOAD_KINDS)}, got {kind!r}")
    try:
        workload: Workload = factory(**options)
    except TypeError as exc:
        raise ValueError(f"workload {kind}: {exc}") from exc
    return workload
