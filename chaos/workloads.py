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

from kvstore.features.definitions import Entity, FeatureView
from kvstore.features.ingest import Event, push_ops
from kvstore.features.keys import online_key
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
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
from replication.event_time import Row, decode_row, merge_rows

Outcome = tuple[str, Any, str | None]  # (type, value, error)
Execution = Generator[ClientOp, Result, Outcome]

WORKLOAD_KINDS: tuple[str, ...] = ("register", "append", "set", "counter")
# Workloads only leaderless mode serves (they read siblings and write with causal contexts).
LEADERLESS_WORKLOAD_KINDS: tuple[str, ...] = ("siblings",)
# Workloads every mode serves that are not built on plain keys' reads and writes.
FEATURE_WORKLOAD_KINDS: tuple[str, ...] = ("features",)
ALL_WORKLOAD_KINDS: tuple[str, ...] = (*WORKLOAD_KINDS, *LEADERLESS_WORKLOAD_KINDS, *FEATURE_WORKLOAD_KINDS)
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


class FeaturesWorkload:
    kind = "features"
    default_checkers: tuple[str, ...] = ("features-acked", "features-monotonic", "features-recompute")
    VIEW_NAME = "rides"
    FEATURES: dict[str, str] = {"trips": "int64", "rating": "float64", "city": "string", "active": "bool"}
    CITIES = ("lisbon", "oslo", "quito", "pune", "perth")
    # Event times start here (2023-11-14) and move on by 0..CLOCK_STEP_MS per event: ties across entities happen.
    BASE_TS_MS = 1_700_000_000_000
    CLOCK_STEP_MS = 20
    # A late event is this far behind the entity's newest (a far-late one, FAR_LATE_MS behind).
    LATE_MS = (1, 2_000)
    FAR_LATE_MS = (100_000, 10_000_000)
    # Events remembered for duplicates (the newest ones: a duplicate is a retry, of something recent).
    RECENT_EVENTS = 64
    # Events per push of the final ops (the unsettled pushes sent again).
    FINAL_PUSH_EVENTS = 100

    def __init__(
        self, entities: int = 24, read_fraction: float = 0.4, batch: int = 3, late_fraction: float = 0.2,
        far_late_fraction: float = 0.05, duplicate_fraction: float = 0.1, same_ts_fraction: float = 0.05,
        ttl_ms: int = 0, r: str | int = "", w: str | int = "", repair: str = "",
    ) -> None:
        fractions = (read_fraction, late_fraction, far_late_fraction, duplicate_fraction, same_ts_fraction)
        if entities < 1 or batch < 1 or not all(0 <= f <= 1 for f in fractions) or sum(fractions[1:]) > 1:
            raise ValueError("features workload: entities and batch must be positive, fractions between 0 and 1, "
                             "the late, far-late, duplicate and same-ts fractions adding up to at most 1")
        self.view = FeatureView(self.VIEW_NAME, Entity("driver", "driver_id"), self.FEATURES, ttl_ms=ttl_ms)
        self.entities = list(range(1, entities + 1))
        self.read_fraction = read_fraction
        self.batch = batch
        self.late_fraction = late_fraction
        self.far_late_fraction = far_late_fraction
        self.duplicate_fraction = duplicate_fraction
        self.same_ts_fraction = same_ts_fraction
        self.r, self.w, self.repair = str(r), str(w), repair
        self._clock_ms = self.BASE_TS_MS
        self._newest_ms: dict[int, int] = {}
        self._recent: list[dict[str, Any]] = []
        # Pushes started and not yet settled (ok or fail): sent again by the final ops.
        self._unsettled: dict[int, list[dict[str, Any]]] = {}
        self._next_push = 0

    def next_op(self, rng: random.Random) -> PlannedOp:
        if rng.random() < self.read_fraction:
            # The key is the entity as the store's keys name it (``Entity.key_of``).
            return PlannedOp("read", str(self.entities[below(rng, len(self.entities))]), None)
        return PlannedOp("push", None, [self._event(rng) for _ in range(between(rng, 1, self.batch))])

    def _event(self, rng: random.Random) -> dict[str, Any]:
        """One event as a push's history records it: ``{"entity", "event_ts_ms", "values"}``."""
        roll = rng.random()
        if roll < self.duplicate_fraction and self._recent:
            return self._recent[below(rng, len(self._recent))]
        roll -= self.duplicate_fraction
        entity = self.entities[below(rng, len(self.entities))]
        newest = self._newest_ms.get(entity)
        self._clock_ms += between(rng, 0, self.CLOCK_STEP_MS)
        if newest is None:
            ts = self._clock_ms
        elif roll < self.same_ts_fraction:
            ts = newest  # another event at a time the entity has: the larger packed value wins each cell
        elif roll < self.same_ts_fraction + self.late_fraction:
            ts = max(0, newest - between(rng, *self.LATE_MS))
        elif roll < self.same_ts_fraction + self.late_fraction + self.far_late_fraction:
            ts = max(0, newest - between(rng, *self.FAR_LATE_MS))
        else:
            ts = self._clock_ms
        self._newest_ms[entity] = max(ts, newest or 0)
        values = {
            "trips": None if rng.random() < 0.05 else between(rng, 0, 1000),
            "rating": round(rng.random() * 5, 3),
            "city": self.CITIES[below(rng, len(self.CITIES))],
            "active": rng.random() < 0.5,
        }
        event = {"entity": entity, "event_ts_ms": ts, "values": values}
        self._recent.append(event)
        if len(self._recent) > self.RECENT_EVENTS:
            del self._recent[0]
        return event

    def final_ops(self) -> list[PlannedOp]:
        """After the heal, every push not known to be acknowledged or refused is sent again, as a client is told
        to do (a push is idempotent): one that was cut short may have stored its events but not every online
        merge, and the online store equals the batch recompute only once every stored event was applied."""
        events = [event for push in self._unsettled.values() for event in push]
        self._unsettled.clear()
        return [PlannedOp("push", None, events[i : i + self.FINAL_PUSH_EVENTS])
                for i in range(0, len(events), self.FINAL_PUSH_EVENTS)]

    def execute(self, op: PlannedOp) -> Execution:
        if op.f == "read":
            assert op.key is not None
            return (yield from self._read(op.key))
        # Settled when it ends ok or fail; a push abandoned at its timeout (the runner stops driving it) stays.
        push_id = self._next_push
        self._next_push += 1
        self._unsettled[push_id] = op.value
        outcome = yield from self._push(op)
        if outcome[0] != "info":
            del self._unsettled[push_id]
        return outcome

    def _push(self, op: PlannedOp) -> Execution:
        events = [Event(e["entity"], e["event_ts_ms"], e["values"]) for e in op.value]
        ops = tuple(push_ops(self.view, events, w=self.w))
        result = yield BatchPutOp(ops)
        if isinstance(result, Failure):
            return _failed(result)
        assert isinstance(result, BatchResults), f"unexpected reply to a batch put: {result!r}"
        failures = [r for r in result.results if isinstance(r, Failure)]
        if not failures:
            return "ok", op.value, None
        if len(failures) == len(ops) and all(f.error_code.definite for f in failures):
            return "fail", None, failures[0].code
        return "info", None, failures[0].code  # some merges may have landed

    def _read(self, entity_key: str) -> Execution:
        key = online_key(self.view.name, entity_key)
        result = yield GetOp(key, r=self.r, repair=self.repair)
        if isinstance(result, Found):
            rows = [result.value]
        elif isinstance(result, FoundSiblings):
            rows = list(result.values)  # an event-time key holds one row; several would be joined by any reader
        elif isinstance(result, Failure) and result.code == "not_found":
            rows = []
        else:
            assert isinstance(result, Failure), f"unexpected reply to a get: {result!r}"
            return "fail", None, result.code  # a read changes nothing: never indefinite
        if not rows:
            return "ok", None, None
        row: Row = {}
        for data in rows:
            row = merge_rows(row, decode_row(data))
        return "ok", {name: [ts, value] for name, (ts, value) in sorted(row.items())}, None


def make_workload(kind: str, options: dict[str, Any]) -> Workload:
    factories: dict[str, type] = {
        "register": RegisterWorkload,
        "append": AppendWorkload,
        "set": SetWorkload,
        "counter": CounterWorkload,
        "siblings": SiblingsWorkload,
        "features": FeaturesWorkload,
    }
    factory = factories.get(kind)
    if factory is None:
        raise ValueError(f"workload kind must be one of {', '.join(ALL_WORKLOAD_KINDS)}, got {kind!r}")
    try:
        workload: Workload = factory(**options)
    except TypeError as exc:
        raise ValueError(f"workload {kind}: {exc}") from exc
    return workload
