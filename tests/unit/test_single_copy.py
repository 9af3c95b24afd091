"""SingleCopy: orders every write at the partition's applied index + 1, answers at once, sweeps TTLs."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstore.messages import DeleteOp, Found, GetOp, PutOp, ScanItem, ScanPage, Written
from kvstore.state_machine import KvStateMachine
from kvstore.storage.memory import MemoryStorage
from replication.replica import (
    Answer,
    ClientCall,
    LogBounds,
    PeerMessage,
    PeerUnreachable,
    Recovered,
    ReplicaStarted,
    StartTimer,
    Synced,
    TimerFired,
)
from replication.single_copy import SWEEP_TIMER, SingleCopy

STARTED = ReplicaStarted(Recovered(0, None, LogBounds(0, 0, 0)))


@dataclass
class FakeLog:
    applied: int = 0

    def applied_index(self) -> int:
        return self.applied


@dataclass
class FakeMachine:
    """Records what the replica asks; a command "writes" (moves the applied index) unless it says "noop"."""

    log: FakeLog
    calls: list[tuple[object, ...]] = field(default_factory=list)
    expired: tuple[str, ...] = ()

    def is_read(self, op: object) -> bool:
        return op == "read"

    def read(self, op: object, now_ms: int) -> object:
        self.calls.append(("read", op, now_ms))
        return "read-result"

    def command(self, op: object, now_ms: int) -> object:
        self.calls.append(("command", op, now_ms))
        return f"cmd:{op}"

    def apply(self, index: int, command: object) -> object:
        self.calls.append(("apply", index, command))
        if command != "cmd:noop":
            self.log.applied = index
        return f"applied {command} at {index}"

    def purge_command(self, now_ms: int, max_keys: int) -> object | None:
        self.calls.append(("purge_command", now_ms, max_keys))
        return ("purge", self.expired) if self.expired else None

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        return ("page", now_ms, start, end, limit)

    def encode_command(self, command: object) -> bytes:
        raise AssertionError("a single copy keeps no log entries")

    def decode_command(self, data: bytes) -> object:
        raise AssertionError("a single copy keeps no log entries")


def fake(applied: int = 0) -> tuple[SingleCopy, FakeMachine]:
    log = FakeLog(applied)
    machine = FakeMachine(log)
    return SingleCopy(4, machine, log, sweep_interval_ms=1000, sweep_max_keys=50), machine  # type: ignore[arg-type]


def test_started_arms_the_sweep() -> None:
    replica, _ = fake()
    assert replica.partition == 4
    assert replica.step(30, STARTED) == [StartTimer(SWEEP_TIMER, 1030)]


def test_a_read_is_answered_from_the_records_and_orders_nothing() -> None:
    replica, machine = fake()
    assert replica.step(5, ClientCall(1, "read")) == [Answer(1, "read-result")]
    assert machine.calls == [("read", "read", 5)]


def test_a_write_is_the_command_at_the_applied_index_plus_one() -> None:
    replica, machine = fake(applied=41)
    assert replica.step(7, ClientCall(2, "put")) == [Answer(2, "applied cmd:put at 42")]
    assert machine.calls == [("command", "put", 7), ("apply", 42, "cmd:put")]
    # A command that writes nothing leaves the index where it was: the next write takes the same one.
    assert replica.step(8, ClientCall(3, "noop")) == [Answer(3, "applied cmd:noop at 43")]
    assert replica.step(9, ClientCall(4, "put")) == [Answer(4, "applied cmd:put at 43")]


def test_the_sweep_applies_a_purge_as_the_next_command_and_rearms() -> None:
    replica, machine = fake(applied=3)
    assert replica.step(2000, TimerFired(SWEEP_TIMER)) == [StartTimer(SWEEP_TIMER, 3000)]
    assert machine.calls == [("purge_command", 2000, 50)]
    machine.expired = ("a", "b")
    machine.calls.clear()
    assert replica.step(3000, TimerFired(SWEEP_TIMER)) == [StartTimer(SWEEP_TIMER, 4000)]
    assert machine.calls == [("purge_command", 3000, 50), ("apply", 4, ("purge", ("a", "b")))]


def test_a_single_copy_ignores_peers_unknown_timers_and_syncs() -> None:
    replica, machine = fake()
    for inp in (PeerMessage("n2", GetOp("k")), PeerUnreachable("n2", GetOp("k")), Synced(), TimerFired("other")):
        assert replica.step(1, inp) == []
    assert machine.calls == []


def test_scan_is_the_machines() -> None:
    replica, _ = fake()
    assert replica.scan(9, "a", "b", 3) == ("page", 9, "a", "b", 3)


def test_with_the_kv_state_machine_versions_grow_per_partition() -> None:
    storage = MemoryStorage()
    replica = SingleCopy(0, KvStateMachine(storage, 0), storage.log(0), sweep_interval_ms=10, sweep_max_keys=5)
    replica.step(0, STARTED)
    assert replica.step(1, ClientCall(1, PutOp("k", b"v", ttl_ms=5))) == [Answer(1, Written("k", 1))]
    assert replica.step(2, ClientCall(2, GetOp("k"))) == [Answer(2, Found("k", b"v", 1, 6))]
    assert replica.step(2, ClientCall(3, DeleteOp("nothing-here"))) != []
    assert replica.step(3, ClientCall(4, PutOp("j", b"w"))) == [Answer(4, Written("j", 2))]
    assert replica.step(10, TimerFired(SWEEP_TIMER)) == [StartTimer(SWEEP_TIMER, 20)]
    assert storage.get_stored(0, "k") is None and storage.log(0).applied_index() == 3
    assert replica.scan(10, "", None, 10) == ScanPage((ScanItem("j", b"w", 2),), truncated=False)
