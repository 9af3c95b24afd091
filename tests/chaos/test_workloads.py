"""Workload ops as generators: which client requests they make and how results become outcomes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from chaos.workloads import (
    MAX_CAS_ATTEMPTS,
    AppendWorkload,
    CounterWorkload,
    Execution,
    PlannedOp,
    RegisterWorkload,
    SetWorkload,
    SiblingsWorkload,
    make_workload,
)
from kvstore.errors import ErrorCode
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
    ScanItem,
    ScanOp,
    ScanPage,
    Stored,
    Written,
)


def drive(gen: Execution, replies: list[Result]) -> tuple[list[ClientOp], Any]:
    """Feed ``replies`` in order; return the requests made and the outcome."""
    requests = [next(gen)]
    for reply in replies:
        try:
            requests.append(gen.send(reply))
        except StopIteration as stop:
            return requests, stop.value
    raise AssertionError(f"the op wanted more replies than {replies}")


NOT_FOUND = Failure.of(ErrorCode.NOT_FOUND, "absent")
TIMEOUT = Failure.of(ErrorCode.TIMEOUT, "slow")
UNAVAILABLE = Failure.of(ErrorCode.UNAVAILABLE, "down")
REFUSED = Failure.of(ErrorCode.PRECONDITION_FAILED, "no")


def test_register_read_write_cas_outcomes() -> None:
    w = RegisterWorkload(keys=1)
    requests, outcome = drive(w.execute(PlannedOp("read", "r0", None)), [Found("register/r0", b"17", 3)])
    assert requests == [GetOp("register/r0")] and outcome == ("ok", 17, None)
    assert drive(w.execute(PlannedOp("read", "r0", None)), [NOT_FOUND])[1] == ("ok", None, None)
    assert drive(w.execute(PlannedOp("read", "r0", None)), [TIMEOUT])[1] == ("info", None, "timeout")
    requests, outcome = drive(w.execute(PlannedOp("write", "r0", 5)), [Written("register/r0", 9)])
    assert requests == [PutOp("register/r0", b"5")] and outcome == ("ok", 5, None)
    assert drive(w.execute(PlannedOp("write", "r0", 5)), [UNAVAILABLE])[1] == ("fail", None, "unavailable")
    assert drive(w.execute(PlannedOp("write", "r0", 5)), [TIMEOUT])[1] == ("info", None, "timeout")
    requests, outcome = drive(w.execute(PlannedOp("cas", "r0", (None, 6))), [REFUSED])
    assert requests == [CasOp("register/r0", None, b"6")]
    assert outcome == ("fail", None, "precondition_failed")


def test_register_plans_unique_values_and_plausible_cas() -> None:
    w = RegisterWorkload(keys=2, read_fraction=0.0, cas_fraction=0.5)
    rng = random.Random(4)
    ops = [w.next_op(rng) for _ in range(200)]
    written = [op.value if op.f == "write" else op.value[1] for op in ops]
    assert len(set(written)) == len(written)
    last: dict[str | None, int] = {}
    for op in ops:
        if op.f == "cas":
            assert op.value[0] == last.get(op.key)
        last[op.key] = op.value if op.f == "write" else op.value[1]


def test_register_deletes_are_planned_at_their_fraction_and_reset_what_a_cas_expects() -> None:
    w = RegisterWorkload(keys=1, read_fraction=0.0, cas_fraction=0.5, delete_fraction=0.25)
    rng = random.Random(9)
    ops = [w.next_op(rng) for _ in range(400)]
    deletes = [op for op in ops if op.f == "delete"]
    assert 60 < len(deletes) < 140 and all(op.value is None for op in deletes)
    last: int | None = None
    for op in ops:
        if op.f == "cas":
            assert op.value[0] == last
        last = None if op.f == "delete" else (op.value if op.f == "write" else op.value[1])
    requests, outcome = drive(w.execute(PlannedOp("delete", "r0", None)), [Deleted("register/r0", 4)])
    assert requests == [DeleteOp("register/r0")] and outcome == ("ok", None, None)
    assert drive(w.execute(PlannedOp("delete", "r0", None)), [NOT_FOUND])[1] == ("ok", None, None)
    assert drive(w.execute(PlannedOp("delete", "r0", None)), [TIMEOUT])[1] == ("info", None, "timeout")
    with pytest.raises(ValueError, match="add up"):
        RegisterWorkload(read_fraction=0.6, cas_fraction=0.3, delete_fraction=0.2)


def test_append_retries_refused_cas_and_stops_at_an_indefinite_one() -> None:
    w = AppendWorkload(keys=1)
    op = PlannedOp("append", "a0", "3,")
    requests, outcome = drive(w.execute(op), [Found("append/a0", b"1,", 1), REFUSED, Found("append/a0", b"1,2,", 2),
                                              Written("append/a0", 3)])
    assert requests[1] == CasOp("append/a0", b"1,", b"1,3,")
    assert requests[3] == CasOp("append/a0", b"1,2,", b"1,2,3,")
    assert outcome == ("ok", "3,", None)
    _, outcome = drive(w.execute(op), [NOT_FOUND, TIMEOUT])
    assert outcome == ("info", "3,", "timeout")  # the cas may have landed: never retried
    _, outcome = drive(w.execute(op), [TIMEOUT])
    assert outcome == ("fail", "3,", "timeout")  # only a read failed: nothing was written
    replies: list[Result] = [NOT_FOUND, REFUSED] * MAX_CAS_ATTEMPTS
    _, outcome = drive(w.execute(op), replies)
    assert outcome == ("fail", "3,", "too_much_contention")


def test_set_add_is_a_put_and_read_pages_through_a_scan() -> None:
    w = SetWorkload()
    requests, outcome = drive(w.execute(PlannedOp("add", "s", 12)), [Written("set/s/0000000012", 1)])
    assert requests == [PutOp("set/s/0000000012", b"1")] and outcome == ("ok", 12, None)
    page1 = ScanPage((ScanItem("set/s/0000000001", b"1", 1), ScanItem("set/s/0000000007", b"1", 2)), truncated=True)
    page2 = ScanPage((ScanItem("set/s/0000000009", b"1", 3),), truncated=False)
    requests, outcome = drive(w.execute(PlannedOp("read", "s", None)), [page1, page2])
    assert isinstance(requests[0], ScanOp) and requests[0].start == "set/s/" and requests[0].end == "set/s0"
    assert isinstance(requests[1], ScanOp) and requests[1].start == "set/s/0000000007\0"
    assert outcome == ("ok", [1, 7, 9], None)
    assert drive(w.execute(PlannedOp("read", "s", None)), [TIMEOUT])[1] == ("fail", None, "timeout")


def test_counter_add_and_read() -> None:
    w = CounterWorkload()
    requests, outcome = drive(w.execute(PlannedOp("add", "c", 4)), [Found("counter/c", b"10", 1),
                                                                     Written("counter/c", 2)])
    assert requests[1] == CasOp("counter/c", b"10", b"14") and outcome == ("ok", 4, None)
    assert drive(w.execute(PlannedOp("read", "c", None)), [NOT_FOUND])[1] == ("ok", 0, None)


def test_make_workload_checks_kind_and_options() -> None:
    assert make_workload("set", {}).kind == "set"
    with pytest.raises(ValueError, match="workload kind"):
        make_workload("queue", {})
    with pytest.raises(ValueError, match="workload register"):
        make_workload("register", {"colour": "red"})


def test_a_leaderless_register_reads_one_value_or_records_the_siblings_it_got() -> None:
    w = RegisterWorkload(keys=1, cas_fraction=0, r=1, w="all", consistency="linearizable")
    read = PlannedOp("read", "r0", None)
    requests, outcome = drive(w.execute(read), [FoundSiblings("register/r0", (b"7",), b"c")])
    assert requests == [GetOp("register/r0", "linearizable", r="1")] and outcome == ("ok", 7, None)
    assert drive(w.execute(read), [FoundSiblings("register/r0", (), b"")])[1] == ("ok", None, None)
    # Several siblings: a value no single write wrote, which the register checkers reject.
    assert drive(w.execute(read), [FoundSiblings("register/r0", (b"9", b"3"), b"c")])[1] == ("ok", (3, 9), None)
    requests, outcome = drive(w.execute(PlannedOp("write", "r0", 5)), [Stored("register/r0", b"c", 3)])
    assert requests == [PutOp("register/r0", b"5", w="all", consistency="linearizable")]
    assert outcome == ("ok", 5, None)
    deleted = drive(w.execute(PlannedOp("delete", "r0", None)), [Stored("register/r0", b"c", 3)])
    assert deleted == ([DeleteOp("register/r0", w="all", consistency="linearizable")], ("ok", None, None))


def test_siblings_writes_send_the_latest_read_context_and_record_what_it_saw() -> None:
    w = SiblingsWorkload(keys=1, read_fraction=0.5, blind_fraction=0.0, w=2)
    rng = random.Random(3)
    ops = [w.next_op(rng) for _ in range(40)]
    first_write = next(op for op in ops if op.f == "write")
    # Nobody read the key yet: a blind write.
    assert first_write.value["saw"] == []
    requests, outcome = drive(w.execute(first_write), [Stored("siblings/k0", b"ctx1", 2)])
    assert requests == [PutOp("siblings/k0", str(first_write.value["value"]).encode(), w="2")]
    assert outcome == ("ok", first_write.value, None)
    read = PlannedOp("read", "k0", None)
    requests, outcome = drive(w.execute(read), [FoundSiblings("siblings/k0", (b"12", b"4"), b"ctx2")])
    assert requests == [GetOp("siblings/k0", r="")] and outcome == ("ok", [4, 12], None)
    write = next(op for op in (w.next_op(rng) for _ in range(40)) if op.f == "write")
    assert write.value["saw"] == [4, 12]
    requests, outcome = drive(w.execute(write), [TIMEOUT])
    assert requests == [PutOp("siblings/k0", str(write.value["value"]).encode(), w="2", context=b"ctx2")]
    assert outcome == ("info", None, "timeout")
    assert drive(w.execute(read), [UNAVAILABLE])[1] == ("fail", None, "unavailable")


def test_blind_siblings_writes_send_no_context_and_the_final_state_lists_every_key() -> None:
    w = SiblingsWorkload(keys=2, read_fraction=0.0, blind_fraction=1.0)
    drive(w.execute(PlannedOp("read", "k0", None)), [FoundSiblings("siblings/k0", (b"1",), b"ctx")])
    write = w.next_op(random.Random(1))
    assert write.value["saw"] == []
    assert drive(w.execute(write), [REFUSED])[0][0].context == b""
    stored = {"siblings/k0": {"n1": [b"1", b"2"], "n2": []}, "other/x": {"n1": [b"x"]}}
    assert w.final_siblings(stored) == {"k0": {"n1": [1, 2], "n2": []}, "k1": {}}
    with pytest.raises(ValueError, match="siblings workload"):
        make_workload("siblings", {"blind_fraction": 2})
