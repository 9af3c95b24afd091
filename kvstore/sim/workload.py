"""A seeded random client workload for the simulator, and the history it records.

Several clients run concurrently; each submits one operation at a time to a random node, waits for
its result, thinks for a moment, and goes again until the workload has issued its ``ops``. Keys come
from a small key space so operations collide; every written value is unique (``c<client>-<n>``), so a
checker can tell which write a read observed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    PutOp,
    Result,
    ScanOp,
    Written,
)
from kvstore.sim.cluster import SimCluster

# Relative weights of the operation kinds a client picks from.
OP_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("get", 30),
    ("put", 30),
    ("delete", 8),
    ("cas", 12),
    ("scan", 8),
    ("batch_get", 6),
    ("batch_put", 6),
)


@dataclass(frozen=True)
class OpRecord:
    """One completed operation of the history."""

    client: int
    node_id: str
    op: ClientOp
    invoke_ms: int
    complete_ms: int
    result: Result


def op_kind(op: ClientOp) -> str:
    return {
        GetOp: "get",
        PutOp: "put",
        DeleteOp: "delete",
        CasOp: "cas",
        ScanOp: "scan",
        BatchGetOp: "batch_get",
        BatchPutOp: "batch_put",
    }[type(op)]


def key_space(keys: int) -> tuple[str, ...]:
    return tuple(f"k{i:03d}" for i in range(keys))


class RandomWorkload:
    def __init__(
        self,
        cluster: SimCluster,
        rng: random.Random,
        ops: int,
        clients: int = 5,
        keys: int = 16,
        max_think_ms: int = 3,
    ) -> None:
        if ops < 0 or clients < 1 or keys < 1 or max_think_ms < 0:
            raise ValueError("a workload needs ops >= 0, clients >= 1, keys >= 1 and max_think_ms >= 0")
        self._cluster = cluster
        self._rng = rng
        self._ops = ops
        self._clients = clients
        self.keys = key_space(keys)
        self._max_think_ms = max_think_ms
        self._kinds = tuple(kind for kind, _ in OP_WEIGHTS)
        self._weights = tuple(weight for _, weight in OP_WEIGHTS)
        self._issued = 0
        self._values_made = 0
        # What each client last saw stored under each key: the expected value of its next CAS there.
        self._last_seen: list[dict[str, bytes | None]] = [{} for _ in range(clients)]
        self.history: list[OpRecord] = []

    @property
    def done(self) -> bool:
        return len(self.history) == self._ops

    def start(self) -> None:
        for client in range(self._clients):
            self._next_turn(client)

    def _next_turn(self, client: int) -> None:
        at_ms = self._cluster.now_ms + self._rng.randint(0, self._max_think_ms)
        self._cluster.schedule(at_ms, lambda: self._issue(client))

    def _issue(self, client: int) -> None:
        if self._issued == self._ops:
            return
        self._issued += 1
        op = self._make_op(client)
        node_id = self._rng.choice(self._cluster.node_ids())
        invoke_ms = self._cluster.now_ms

        def on_result(request_id: int, result: Result) -> None:
            self.history.append(OpRecord(client, node_id, op, invoke_ms, self._cluster.now_ms, result))
            self._observe(client, op, result)
            self._next_turn(client)

        self._cluster.submit(node_id, op, on_result)

    def _make_op(self, client: int) -> ClientOp:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        key = self._rng.choice(self.keys)
        if kind == "get":
            return GetOp(key)
        if kind == "put":
            return PutOp(key, self._fresh_value(client))
        if kind == "delete":
            return DeleteOp(key)
        if kind == "cas":
            new = None if self._rng.random() < 0.2 else self._fresh_value(client)
            return CasOp(key, self._last_seen[client].get(key), new)
        if kind == "scan":
            start_index = self._rng.randrange(len(self.keys))
            end_index = self._rng.randint(start_index, len(self.keys))
            end = self.keys[end_index] if end_index < len(self.keys) else None
            return ScanOp(self.keys[start_index], end, self._rng.randint(1, 8))
        batch_keys = self._rng.sample(self.keys, min(len(self.keys), self._rng.randint(2, 4)))
        if kind == "batch_get":
            return BatchGetOp(tuple(batch_keys))
        return BatchPutOp(tuple(PutOp(k, self._fresh_value(client)) for k in batch_keys))

    def _fresh_value(self, client: int) -> bytes:
        self._values_made += 1
        return f"c{client}-{self._values_made}".encode()

    def _observe(self, client: int, op: ClientOp, result: Result) -> None:
        seen = self._last_seen[client]
        if isinstance(op, GetOp) and isinstance(result, Found):
            seen[op.key] = result.value
        elif isinstance(op, GetOp) and isinstance(result, Failure) and result.code == "not_found":
            seen[op.key] = None
        elif isinstance(op, PutOp) and isinstance(result, Written):
            seen[op.key] = op.value
        elif isinstance(op, DeleteOp) and isinstance(result, Deleted):
            seen[op.key] = None
        elif isinstance(op, CasOp) and not isinstance(result, Failure):
            seen[op.key] = op.new
        elif isinstance(op, BatchPutOp) and isinstance(result, BatchResults):
            for item, entry in zip(op.items, result.results, strict=True):
                if isinstance(entry, Written):
                    seen[item.key] = item.value
