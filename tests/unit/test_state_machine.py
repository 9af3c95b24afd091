"""KvStateMachine: commands fixed once by the orderer, applied deterministically, versions from indexes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.codec import INT64_MAX, CodecError, encode
from kvstore.commands import (
    CasCommand,
    DeleteCommand,
    PurgeCommand,
    PutCommand,
    RefusedCommand,
)
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CasOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    PutOp,
    ScanItem,
    ScanPage,
    Written,
)
from kvstore.state_machine import KvStateMachine
from kvstore.storage.base import Record
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage

P = 3


def machine(storage: MemoryStorage | None = None) -> KvStateMachine:
    return KvStateMachine(MemoryStorage() if storage is None else storage, P)


def apply_next(storage: MemoryStorage, m: KvStateMachine, command: object) -> object:
    """Apply as the next index of the partition, as a single copy orders commands."""
    return m.apply(storage.log(P).applied_index() + 1, command)


def not_found(key: str) -> Failure:
    return Failure.of(ErrorCode.NOT_FOUND, f"key {key!r} not found")


# ---------------------------------------------------------------- commands


def test_a_write_op_becomes_a_command_with_absolute_expiry_and_the_orderers_clock() -> None:
    m = machine()
    assert m.command(PutOp("k", b"v"), 100) == PutCommand(100, "k", b"v", None)
    assert m.command(PutOp("k", b"v", ttl_ms=50), 100) == PutCommand(100, "k", b"v", 150)
    assert m.command(CasOp("k", b"a", b"b", ttl_ms=5), 7) == CasCommand(7, "k", b"a", b"b", 12)
    assert m.command(CasOp("k", None, None), 7) == CasCommand(7, "k", None, None, None)
    assert m.command(DeleteOp("k"), 9) == DeleteCommand(9, "k")


def test_reads_are_not_commands() -> None:
    m = machine()
    assert m.is_read(GetOp("k"))
    assert not any(m.is_read(op) for op in (PutOp("k", b"v"), DeleteOp("k"), CasOp("k", None, b"v")))
    with pytest.raises(TypeError):
        m.command(GetOp("k"), 1)
    with pytest.raises(TypeError):
        m.read(PutOp("k", b"v"), 1)


@pytest.mark.parametrize("now_ms", [INT64_MAX - 999, INT64_MAX, 2**64])
def test_a_deadline_that_would_not_fit_in_64_bits_is_refused_where_the_command_is_made(now_ms: int) -> None:
    storage = MemoryStorage()
    m = machine(storage)
    refused = m.command(PutOp("k", b"v", ttl_ms=1000), now_ms)
    message = "this node's clock is too far ahead to hold a deadline 1000 ms from now; the op did not happen"
    assert refused == RefusedCommand(message)
    assert m.command(CasOp("k", None, b"v", ttl_ms=1000), now_ms) == refused
    assert apply_next(storage, m, refused) == Failure.of(ErrorCode.UNAVAILABLE, message)
    assert storage.key_count() == 0 and storage.log(P).applied_index() == 0 and storage.written_lsn == 0


def test_a_clock_past_64_bits_orders_commands_that_still_encode() -> None:
    m = machine()
    # Every deadline fits in 64 bits, so judging expiry at INT64_MAX judges as at any later time.
    command = m.command(PutOp("k", b"v"), 2**64)
    assert command == PutCommand(INT64_MAX, "k", b"v", None)
    assert m.decode_command(m.encode_command(command)) == command


def test_commands_round_trip_through_the_codec_and_nothing_else_decodes_as_one() -> None:
    m = machine()
    commands = [
        PutCommand(1, "k", b"v", 5),
        DeleteCommand(2, "k"),
        CasCommand(3, "k", None, b"x", None),
        PurgeCommand(4, ("a", "b")),
        RefusedCommand("no"),
    ]
    for command in commands:
        assert m.decode_command(m.encode_command(command)) == command
    with pytest.raises(CodecError):
        m.decode_command(encode(GetOp("k")))


# ---------------------------------------------------------------- apply: results as today, versions from indexes


def test_apply_answers_as_the_foundation_did_and_versions_are_the_indexes() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    assert apply_next(storage, m, m.command(PutOp("k", b"v1"), 10)) == Written("k", 1)
    assert m.read(GetOp("k"), 11) == Found("k", b"v1", 1)
    refused = Failure.of(ErrorCode.PRECONDITION_FAILED, "key 'k' is not the expected value")
    assert apply_next(storage, m, m.command(CasOp("k", b"wrong", b"v2"), 12)) == refused
    assert apply_next(storage, m, m.command(CasOp("k", b"v1", b"v2"), 13)) == Written("k", 2)
    assert apply_next(storage, m, m.command(DeleteOp("k"), 14)) == Deleted("k", True)
    assert apply_next(storage, m, m.command(DeleteOp("k"), 15)) == Deleted("k", False)
    assert m.read(GetOp("k"), 16) == not_found("k")
    absent = Failure.of(ErrorCode.PRECONDITION_FAILED, "key 'k' is not absent")
    assert apply_next(storage, m, m.command(CasOp("k", None, b"x"), 17)) == Written("k", 4)
    assert apply_next(storage, m, m.command(CasOp("k", None, b"y"), 18)) == absent
    assert apply_next(storage, m, m.command(CasOp("k", b"x", None), 19)) == Deleted("k", True)
    # The delete took index 3 and the CAS delete index 5: the re-created key's version still grows.
    assert apply_next(storage, m, m.command(PutOp("k", b"again"), 20)) == Written("k", 6)
    assert m.read(GetOp("k"), 21) == Found("k", b"again", 6)


def test_commands_that_write_nothing_record_no_applied_index() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    for op in (DeleteOp("k"), CasOp("k", b"x", b"y"), CasOp("k", None, None)):
        result = m.apply(7, m.command(op, 1))
        assert isinstance(result, (Deleted, Failure)), result
    assert m.apply(7, PurgeCommand(1, ("k",))) == 0
    assert storage.log(P).applied_index() == 0 and storage.written_lsn == 0


def test_expiry_is_judged_at_the_commands_time_not_the_appliers() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    apply_next(storage, m, m.command(PutOp("k", b"v", ttl_ms=100), 0))  # expires at 100
    # Ordered at 99 and applied whenever: the value was still there.
    late_cas = m.command(CasOp("k", b"v", b"w"), 99)
    # Ordered at 100: it had expired.
    expired_cas = m.command(CasOp("k", b"v", b"x"), 100)
    refused = Failure.of(ErrorCode.PRECONDITION_FAILED, "key 'k' is not the expected value")
    other = MemoryStorage()
    o = machine(other)
    apply_next(other, o, PutCommand(0, "k", b"v", 100))
    assert apply_next(other, o, expired_cas) == refused
    assert apply_next(storage, m, late_cas) == Written("k", 2)
    # A delete ordered after expiry removes the record but reports that it was gone already.
    assert apply_next(other, o, DeleteCommand(100, "k")) == Deleted("k", False)
    assert other.key_count() == 0


def test_purge_removes_only_keys_still_expired_at_its_time() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    for key in ("a", "b", "c"):
        apply_next(storage, m, m.command(PutOp(key, b"v", ttl_ms=10), 0))
    apply_next(storage, m, m.command(PutOp("d", b"v"), 0))
    purge = m.purge_command(50, 10)
    assert purge == PurgeCommand(50, ("a", "b", "c"))
    assert m.purge_command(5, 10) is None  # nothing expired yet
    assert m.purge_command(50, 2) == PurgeCommand(50, ("a", "b"))
    # Between the command and its apply, "b" is rewritten without a TTL and "c" is deleted.
    apply_next(storage, m, m.command(PutOp("b", b"new"), 20))  # index 5
    apply_next(storage, m, m.command(DeleteOp("c"), 21))  # index 6
    assert apply_next(storage, m, purge) == 1
    assert [key for key, _ in storage.copy_of(P)] == ["b", "d"]
    assert storage.log(P).applied_index() == 7
    assert m.purge_command(10**6, 10) is None


def test_scan_pages_live_records_and_says_when_more_remain() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    for key in ("a", "b", "c"):
        apply_next(storage, m, m.command(PutOp(key, key.encode()), 0))
    apply_next(storage, m, m.command(PutOp("bb", b"x", ttl_ms=5), 0))
    assert m.scan(10, "", None, 2) == ScanPage((ScanItem("a", b"a", 1), ScanItem("b", b"b", 2)), truncated=True)
    assert m.scan(10, "b", None, 5) == ScanPage((ScanItem("b", b"b", 2), ScanItem("c", b"c", 3)), truncated=False)
    assert m.scan(1, "b", "c", 5) == ScanPage((ScanItem("b", b"b", 2), ScanItem("bb", b"x", 4)), truncated=False)


def test_reads_never_serve_a_tombstone() -> None:
    storage = MemoryStorage()
    m = machine(storage)
    storage.write(P, "t", Record(None, 9))  # a tombstone some other mode keeps
    assert m.read(GetOp("t"), 0) == not_found("t")
    assert m.scan(0, "", None, 10) == ScanPage((), truncated=False)
    assert apply_next(storage, m, DeleteCommand(0, "t")) == Deleted("t", False)


def test_versions_go_on_from_the_applied_index_after_a_restart() -> None:
    disk = SimDisk()
    storage = SimStorage(disk)
    m = machine(storage)
    apply_next(storage, m, m.command(PutOp("k", b"v"), 0))
    apply_next(storage, m, m.command(DeleteOp("k"), 1))
    storage.sync()
    restarted = SimStorage(disk)
    assert restarted.log(P).applied_index() == 2
    again = machine(restarted)
    assert apply_next(restarted, again, again.command(PutOp("k", b"w"), 2)) == Written("k", 3)


# ---------------------------------------------------------------- determinism

_KEYS = st.sampled_from(["a", "b", "c"])
_VALUES = st.sampled_from([b"1", b"2", None])
_TTLS = st.one_of(st.none(), st.integers(1, 30))
_OPS = st.one_of(
    st.builds(PutOp, _KEYS, st.sampled_from([b"1", b"2"]), _TTLS),
    st.builds(DeleteOp, _KEYS),
    st.builds(CasOp, _KEYS, _VALUES, _VALUES, _TTLS),
    st.just("purge"),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_OPS, st.integers(0, 20), st.integers(-1000, 1000)), max_size=30))
def test_two_replicas_applying_the_same_commands_end_equal(steps: list[tuple[object, int, int]]) -> None:
    """One orderer makes the commands on its clock; two replicas apply them, each reading at its own clock
    (skewed by any amount) in between: every result and every record is the same on both."""
    orderer_ms = 0
    replicas = [MemoryStorage(), MemoryStorage()]
    machines = [machine(s) for s in replicas]
    for op, advance_ms, skew_ms in steps:
        orderer_ms += advance_ms
        command = machines[0].purge_command(orderer_ms, 2) if op == "purge" else machines[0].command(op, orderer_ms)
        if command is None:
            continue
        results = [apply_next(s, m, command) for s, m in zip(replicas, machines, strict=True)]
        assert results[0] == results[1]
        # A local read at a skewed clock changes nothing.
        machines[1].read(GetOp("a"), orderer_ms + skew_ms)
        machines[1].scan(orderer_ms + skew_ms, "", None, 10)
    assert replicas[0].copy_of(P) == replicas[1].copy_of(P)
    assert replicas[0].log(P).applied_index() == replicas[1].log(P).applied_index()
