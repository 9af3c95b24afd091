"""The features workload's generator: one seed, one sequence of ops; the events it draws are late, far late,
duplicated and at times the entity already has, as the chaos checks need; a push is the merges ``push_ops``
builds, and its outcome follows what the batch's merges answered."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import pytest

from chaos.workloads import FeaturesWorkload, PlannedOp, make_workload
from kvstore.features.ingest import Event, push_ops
from kvstore.features.keys import online_key
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    ClientOp,
    Failure,
    Found,
    FoundSiblings,
    GetOp,
    Result,
    Stored,
    Written,
)
from replication.event_time import encode_row


def plan(seed: int, ops: int = 2000, **options: Any) -> list[PlannedOp]:
    workload = FeaturesWorkload(**options)
    rng = random.Random(seed)
    return [workload.next_op(rng) for _ in range(ops)]


def test_one_seed_plans_the_same_ops_and_another_seed_others() -> None:
    assert plan(7) == plan(7)
    assert plan(7) != plan(8)


def test_the_events_are_late_far_late_duplicated_and_tied_in_time() -> None:
    newest: dict[int, int] = {}
    seen: set[tuple[int, int, str]] = set()
    late = far_late = duplicates = same_time = 0
    for op in plan(3):
        for event in op.value if op.f == "push" else ():
            entity, ts = event["entity"], event["event_ts_ms"]
            identity = (entity, ts, repr(sorted(event["values"].items())))
            if identity in seen:
                duplicates += 1
                continue
            before = newest.get(entity)
            if before is not None and ts == before:
                same_time += 1
            elif before is not None and before - ts >= FeaturesWorkload.FAR_LATE_MS[0]:
                far_late += 1
            elif before is not None and ts < before:
                late += 1
            seen.add(identity)
            newest[entity] = max(ts, before or 0)
    assert min(late, far_late, duplicates, same_time) > 10, (late, far_late, duplicates, same_time)
    reads = [op for op in plan(3) if op.f == "read"]
    assert 0.3 < len(reads) / 2000 < 0.5 and {op.key for op in reads} == {str(e) for e in range(1, 25)}


def drive(gen: Generator[ClientOp, Result, Any], answer: Any) -> tuple[ClientOp, Any]:
    request = next(gen)
    try:
        gen.send(answer(request))
    except StopIteration as stop:
        return request, stop.value
    raise AssertionError("the op asked for more than one request")


def test_a_push_sends_exactly_the_merges_push_ops_builds_with_the_quorum_asked() -> None:
    workload = FeaturesWorkload(w="2")
    events: list[dict[str, Any]] = [
        {"entity": 1, "event_ts_ms": 10, "values": {"trips": 1, "rating": 2.0, "city": "oslo", "active": True}},
        {"entity": 1, "event_ts_ms": 5, "values": {"trips": 2, "rating": 1.0, "city": "pune", "active": False}},
    ]
    op = PlannedOp("push", None, events)
    request, outcome = drive(workload.execute(op), lambda r: BatchResults(tuple(Written(p.key, 1) for p in r.items)))
    expected = push_ops(workload.view, [Event(e["entity"], e["event_ts_ms"], e["values"]) for e in events])
    assert isinstance(request, BatchPutOp)
    assert [(p.key, p.value, p.merge, p.w) for p in request.items] == [(p.key, p.value, True, "2") for p in expected]
    assert outcome == ("ok", events, None)


@pytest.mark.parametrize(("answers", "outcome"), [
    (("ok", "ok", "ok"), "ok"),
    (("unavailable", "unavailable", "unavailable"), "fail"),
    (("ok", "unavailable", "ok"), "info"),
    (("timeout", "unavailable", "unavailable"), "info"),
])
def test_a_push_is_ok_when_every_merge_was_acknowledged_fail_when_none_was_and_else_info(
    answers: tuple[str, ...], outcome: str
) -> None:
    workload = FeaturesWorkload()
    values = {"trips": 1, "rating": 2.0, "city": "oslo", "active": True}
    # Two events of one entity: two event-log merges and one online merge.
    events = [{"entity": 1, "event_ts_ms": ts, "values": values} for ts in (1, 2)]

    def answer(request: Any) -> BatchResults:
        assert len(request.items) == len(answers)
        return BatchResults(tuple(Stored(p.key, b"", 2) if a == "ok" else Failure(a, "no") for p, a in
                                  zip(request.items, answers, strict=True)))

    _, result = drive(workload.execute(PlannedOp("push", None, events)), answer)
    assert result[0] == outcome
    # A push not settled (info) is sent again by the final ops, with every event it carried.
    assert [op.value for op in workload.final_ops()] == ([events] if outcome == "info" else [])


def test_a_read_records_each_features_event_time_and_value_in_every_mode() -> None:
    workload = FeaturesWorkload(r="2", repair="sync")
    row = {"trips": (5, 3), "city": (6, "oslo"), "rating": (5, 1.5), "active": (5, None)}
    seen = {"active": [5, None], "city": [6, "oslo"], "rating": [5, 1.5], "trips": [5, 3]}
    key = online_key(workload.view.name, "4")
    for answer in (Found(key, encode_row(row), 3), FoundSiblings(key, (encode_row(row),), b"")):
        request, outcome = drive(workload.execute(PlannedOp("read", "4", None)), lambda _r, a=answer: a)
        assert request == GetOp(key, r="2", repair="sync")
        assert outcome == ("ok", seen, None)
    _, absent = drive(workload.execute(PlannedOp("read", "4", None)), lambda _r: Failure("not_found", "none"))
    assert absent == ("ok", None, None)
    _, failed = drive(workload.execute(PlannedOp("read", "4", None)), lambda _r: Failure("timeout", "slow"))
    assert failed == ("fail", None, "timeout")


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="features workload"):
        make_workload("features", {"late_fraction": 0.9, "duplicate_fraction": 0.5})
    with pytest.raises(ValueError, match="features workload"):
        make_workload("features", {"entities": 0})
