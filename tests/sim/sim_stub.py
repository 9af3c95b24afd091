"""A stand-in for ``kvstore.node.Node`` that the simulator drives: each client op names what the step does.

The op's key says it: ``dur/<k>`` writes ``k`` and answers with a durable Reply; ``free/<k>`` writes and
answers unmarked; ``send/<dst>/<k>`` writes and sends ``dst`` a durable message, answering unmarked;
``sendfree/<dst>/<k>`` writes nothing and sends unmarked; ``bulk/<n>`` writes ``n`` records and answers
unmarked; a ``GetOp`` writes nothing and answers durably (a read may have seen unsynced writes). Every
input is recorded with the node clock and the storage's written LSN after the step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvstore.config import ClusterConfig, FsyncPolicy, StorageConfig, local_cluster
from kvstore.effects import Effect, Reply, Send
from kvstore.messages import ClientRequest, Found, GetOp, Input, Message, PutOp, Written
from kvstore.storage.base import Record, Storage

PARTITION = 0


@dataclass
class StubNode:
    node_id: str
    config: ClusterConfig
    storage: Storage
    rng: random.Random
    # (node clock, input, written_lsn after the step)
    inputs: list[tuple[int, Input, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        LIVE[self.node_id] = self

    def step(self, now_ms: int, inp: Input) -> list[Effect]:
        effects = self._effects(inp)
        self.inputs.append((now_ms, inp, self.storage.written_lsn))
        return effects

    def received(self, kind: type) -> list[tuple[int, Input, int]]:
        return [entry for entry in self.inputs if isinstance(entry[1], kind)]

    def _write(self, key: str) -> None:
        self.storage.write(PARTITION, key, Record(b"v", self.storage.written_lsn + 1))

    def _effects(self, inp: Input) -> list[Effect]:
        if not isinstance(inp, ClientRequest):
            return []
        rid, op = inp.request_id, inp.op
        if isinstance(op, GetOp):
            return [Reply(rid, Found(op.key, b"v", 0), durable=True)]
        assert isinstance(op, PutOp), op
        kind, _, rest = op.key.partition("/")
        if kind in ("dur", "free"):
            self._write(rest)
            return [Reply(rid, Written(op.key, self.storage.written_lsn), durable=kind == "dur")]
        if kind == "bulk":
            for i in range(int(rest)):
                self._write(f"bulk{i}")
            return [Reply(rid, Written(op.key, self.storage.written_lsn))]
        dst, _, key = rest.partition("/")
        if kind == "send":
            self._write(key)
        msg = Message(self.node_id, dst, PARTITION, GetOp(key))
        return [Send(msg, durable=kind == "send"), Reply(rid, Written(op.key, self.storage.written_lsn))]


# The stub now running as each node (a restart replaces it).
LIVE: dict[str, StubNode] = {}


def stub_config(fsync: FsyncPolicy, nodes: int = 2, batch_interval_ms: int = 10) -> ClusterConfig:
    storage = StorageConfig(engine="memory", fsync=fsync, batch_interval_ms=batch_interval_ms)
    return local_cluster(nodes, partitions=4, storage=storage)
