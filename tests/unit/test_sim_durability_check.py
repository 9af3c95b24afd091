from __future__ import annotations

import pytest

from kvstore.errors import ErrorCode
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    PutOp,
    Result,
)
from kvstore.messages import Written as W
from kvstore.sim.durability_check import lost_writes, write_attempts
from kvstore.sim.workload import OpRecord

TIMEOUT = Failure.of(ErrorCode.TIMEOUT, "maybe")
UNAVAILABLE = Failure.of(ErrorCode.UNAVAILABLE, "no")


def rec(op: ClientOp, result: Result, invoke_ms: int = 0, complete_ms: int = 1) -> OpRecord:
    return OpRecord(0, "n1", op, invoke_ms, complete_ms, result)


def test_the_latest_acknowledged_write_passes() -> None:
    history = [rec(PutOp("a", b"1"), W("a", 1)), rec(PutOp("a", b"2"), W("a", 5))]
    assert lost_writes(history, {"a": Found("a", b"2", 5)}) == []


def test_an_older_version_at_the_end_means_a_lost_write() -> None:
    history = [rec(PutOp("a", b"1"), W("a", 1)), rec(PutOp("a", b"2"), W("a", 5))]
    assert lost_writes(history, {"a": Found("a", b"1", 1)}) == ["a: acknowledged write b'2' v5 lost; the key holds v1"]


def test_a_vanished_key_needs_a_delete_that_could_follow() -> None:
    put = rec(PutOp("a", b"1"), W("a", 1), invoke_ms=10, complete_ms=12)
    assert lost_writes([put], {"a": None}) == ["a: acknowledged write b'1' v1 is gone"]
    earlier_delete = rec(DeleteOp("a"), Deleted("a", True), invoke_ms=0, complete_ms=5)
    assert lost_writes([put, earlier_delete], {"a": None}) == ["a: acknowledged write b'1' v1 is gone"]
    maybe_delete = rec(CasOp("a", b"1", None), TIMEOUT, invoke_ms=11, complete_ms=2000)
    assert lost_writes([put, maybe_delete], {"a": None}) == []
    # Deleting nothing, or certainly failing to, explains nothing.
    assert lost_writes([put, rec(DeleteOp("a"), Deleted("a", False), 20, 21)], {"a": None}) != []
    assert lost_writes([put, rec(DeleteOp("a"), UNAVAILABLE, 20, 21)], {"a": None}) != []


def test_values_must_come_from_a_possible_write_with_its_version() -> None:
    history = [rec(PutOp("a", b"1"), W("a", 3)), rec(PutOp("a", b"2"), UNAVAILABLE), rec(PutOp("a", b"3"), TIMEOUT)]
    assert lost_writes(history, {"a": Found("a", b"3", 9)}) == []  # the timed-out write happened after all
    assert lost_writes(history, {"a": Found("a", b"2", 9)}) == ["a: holds b'2' v9, which no write could have made"]
    assert lost_writes(history, {"a": Found("a", b"1", 2)}) == [
        "a: holds b'1' as v2, acknowledged as v3",
        "a: acknowledged write b'1' v3 lost; the key holds v2",
    ]


def test_batches_count_entry_by_entry() -> None:
    batch = BatchPutOp((PutOp("a", b"1"), PutOp("b", b"2")))
    history = [rec(batch, BatchResults((W("a", 4), TIMEOUT)))]
    attempts = write_attempts(history)
    assert [(w.value, w.version) for w in attempts["a"]] == [(b"1", 4)]
    assert [(w.value, w.version) for w in attempts["b"]] == [(b"2", None)]
    assert lost_writes(history, {"a": Found("a", b"1", 4), "b": None}) == []
    whole_batch_failed = [rec(batch, UNAVAILABLE)]
    assert write_attempts(whole_batch_failed) == {}


def test_every_written_key_needs_a_final_read() -> None:
    with pytest.raises(ValueError, match="no final read of 'a'"):
        lost_writes([rec(PutOp("a", b"1"), W("a", 1))], {})
