"""A stand-in for ``kvstore.node.Node`` for the drivers' durability tests (the server's pump, the simulator).

Each client op's key names what the step does: ``dur/<k>`` writes ``k`` and answers with a durable
Reply; ``free/<k>`` writes and answers unmarked; ``send/<dst>/<k>`` writes and sends ``dst`` a durable
message, answering unmarked; ``sendfree/<dst>/<k>`` writes nothing and sends unmarked; ``bulk/<n>`` writes
``n`` records and answers unmarked; a ``GetOp`` writes nothing and answers durably (a read may have seen
unsynced writes). Every input is recorded with the node clock and the storage's synced LSN when it was
stepped. The storage is the driver's: a real one (the simulator's) or one that only counts LSNs (the
pump's tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kvstore.effects import Effect, Reply, Send
from kvstore.messages import ClientRequest, Found, GetOp, Input, Message, PutOp, Synced, Written
from kvstore.storage.base import Record

PARTITION = 0


class WrittenStorage(Protocol):
    """What the stub needs of storage: a write (taking the next LSN) and the durability cursor."""

    @property
    def written_lsn(self) -> int: ...

    @property
    def synced_lsn(self) -> int: ...

    def write(self, partition: int, key: str, record: Record) -> None: ...


class Stepped(NamedTuple):
    at_ms: int
    input: Input
    synced_lsn: int  # the storage's, when the input was stepped


@dataclass
class StubNode:
    node_id: str
    storage: WrittenStorage
    inputs: list[Stepped] = field(default_factory=list)

    def step(self, now_ms: int, inp: Input) -> list[Effect]:
        self.inputs.append(Stepped(now_ms, inp, self.storage.synced_lsn))
        return self._effects(inp)

    def received(self, kind: type) -> list[Stepped]:
        return [entry for entry in self.inputs if isinstance(entry.input, kind)]

    def synced(self) -> list[Synced]:
        return [inp for _, inp, _ in self.inputs if isinstance(inp, Synced)]

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
