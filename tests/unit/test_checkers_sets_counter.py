"""Set, counter, lost-write and convergence checkers on small hand-built histories."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import convergence, counter, lost_writes, sets
from chaos.history import from_dicts


def op(p: Any, f: str, value: Any, outcome: str = "ok", key: Any = None, result: Any = None) -> list[dict[str, Any]]:
    invoke = {"process": p, "type": "invoke", "f": f, "key": key, "value": None if f == "read" else value}
    done = {"process": p, "type": outcome, "f": f, "key": key, "value": result if f == "read" else value}
    return [invoke, done]


def test_set_all_elements_present_is_valid() -> None:
    rows = op(1, "add", 1) + op(2, "add", 2) + op(1, "read", None, result=[1, 2])
    result = sets.check(from_dicts(rows))
    assert result.valid and result.ok_count == 2 and result.lost == [] and result.unexpected == []


def test_set_lost_stale_never_read_unexpected() -> None:
    rows = (
        op(1, "add", 1)
        + op(2, "add", 2)
        + op(3, "add", 3, outcome="fail")
        + op(1, "read", None, result=[1])  # 2 missing here...
        + op(2, "read", None, result=[1, 2, 3, 9])  # ...back here: stale; 3 failed and 9 never added
        + op(1, "read", None, result=[2])  # 1 gone for good: lost (this read began after all that held it)
        + op(4, "add", 4)  # no read after it
    )
    result = sets.check(from_dicts(rows))
    assert result.lost == [1]
    assert result.stale == [2]
    assert result.unexpected == [3, 9]
    assert result.never_read == [4]
    assert result.valid is False


def test_set_info_add_seen_by_a_read_is_known() -> None:
    rows = op(1, "add", 1, outcome="info") + op(2, "read", None, result=[1]) + op(2, "read", None, result=[])
    result = sets.check(from_dicts(rows))
    assert result.lost == [1]
    # An info add nobody saw may never have happened: not lost.
    rows = op(1, "add", 1, outcome="info") + op(2, "read", None, result=[])
    assert sets.check(from_dicts(rows)).valid is True


def test_stale_only_invalid_when_not_allowed() -> None:
    rows = op(1, "add", 1) + op(2, "read", None, result=[]) + op(2, "read", None, result=[1])
    assert sets.check(from_dicts(rows)).valid is True
    assert sets.check(from_dicts(rows), allow_stale=False).valid is False


def test_counter_read_within_bounds() -> None:
    rows = op(1, "add", 1) + op(1, "add", 2) + op(2, "read", None, result=3)
    assert counter.check(from_dicts(rows)).valid is True
    rows = op(1, "add", 1) + op(1, "add", 2) + op(2, "read", None, result=2)
    result = counter.check(from_dicts(rows))
    assert result.valid is False
    assert result.errors[0].lower == 3 and result.errors[0].upper == 3


def test_counter_indefinite_and_concurrent_adds_widen_the_range() -> None:
    rows = [
        *op(1, "add", 5),
        {"process": 2, "type": "invoke", "f": "add", "value": 10},
        {"process": 3, "type": "invoke", "f": "add", "value": -3},
        *op(4, "read", None, result=12),
        {"process": 2, "type": "info", "f": "add", "value": 10},
        {"process": 3, "type": "ok", "f": "add", "value": -3},
    ]
    result = counter.check(from_dicts(rows))
    assert result.valid is True
    assert result.final_range == (2, 15)
    assert result.acknowledged_sum == 2


def test_counter_failed_add_never_counts() -> None:
    rows = op(1, "add", 5, outcome="fail") + op(2, "read", None, result=5)
    assert counter.check(from_dicts(rows)).valid is False


def test_lost_write_is_named_with_its_proof() -> None:
    rows = op(1, "write", "a", key="k") + op(1, "write", "b", key="k") + op(2, "read", None, key="k", result="a")
    result = lost_writes.check(from_dicts(rows))
    assert result.valid is False
    assert [w.write.invoke.value for w in result.lost] == ["b"]
    assert result.lost[0].read_value == "a"


def test_overwritten_and_concurrent_writes_are_not_lost() -> None:
    rows = [
        *op(1, "write", "a", key="k"),
        {"process": 2, "type": "invoke", "f": "write", "key": "k", "value": "b"},
        {"process": 3, "type": "invoke", "f": "write", "key": "k", "value": "c"},
        {"process": 2, "type": "ok", "f": "write", "key": "k", "value": "b"},
        {"process": 3, "type": "ok", "f": "write", "key": "k", "value": "c"},
        *op(4, "read", None, key="k", result="b"),
    ]
    assert lost_writes.check(from_dicts(rows)).valid is True


def test_final_state_acts_as_a_last_read() -> None:
    rows = op(1, "write", "a", key="k") + op(1, "write", "b", key="k")
    assert lost_writes.check(from_dicts(rows), {"k": "b"}).valid is True
    result = lost_writes.check(from_dicts(rows), {"k": None})
    assert [w.write.invoke.value for w in result.lost] == ["a", "b"]


def test_final_only_judges_by_the_last_observation() -> None:
    # A read shows an older value, and the write never shows up again: lost, unless only the final
    # observation counts (modes with stale reads by design) and that shows a newer write.
    rows = (op(1, "write", "a", key="k") + op(1, "write", "b", key="k") + op(2, "read", None, key="k", result="a")
            + op(1, "write", "c", key="k"))
    assert [w.write.invoke.value for w in lost_writes.check(from_dicts(rows), {"k": "c"}).lost] == ["b"]
    assert lost_writes.check(from_dicts(rows), {"k": "c"}, final_only=True).valid is True
    assert [w.write.invoke.value for w in lost_writes.check(from_dicts(rows), {"k": "a"}, final_only=True).lost] == [
        "b", "c"]


def test_non_unique_values_are_ambiguous_not_guessed() -> None:
    rows = op(1, "write", "a", key="k") + op(1, "write", "a", key="k") + op(2, "read", None, key="k", result=None)
    result = lost_writes.check(from_dicts(rows))
    assert result.ambiguous_keys == ["k"] and result.valid is True


def test_convergence() -> None:
    ok = convergence.check({"n1": {"a": 1, "b": 2}, "n2": {"a": 1, "b": 2}})
    assert ok.valid and ok.converged == {"a": 1, "b": 2}
    bad = convergence.check({"n1": {"a": 1}, "n2": {"a": 2}, "n3": {}}, replicas_of=lambda k: ["n1", "n2", "n3"])
    assert bad.valid is False
    assert bad.diverged[0].values == {"n1": 1, "n2": 2, "n3": "<absent>"}


def naive_set_verdicts(rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """(lost, stale, never read), straight from the definitions, quadratic and obviously right.

    Lost: a read that began after the last read holding the element had ended (or after it was known,
    if no read held it) misses it. Stale: a read that began after it was known misses it, but not lost.
    """
    ops = from_dicts(rows).ops()
    adds = {op.invoke.value: op for op in ops if op.f == "add"}
    reads = [op for op in ops if op.f == "read" and op.type == "ok"]
    lost, stale, never = [], [], []
    for element in sorted(adds, key=repr):
        add = adds[element]
        if add.type == "fail":
            continue
        seen = [r.complete_index for r in reads if element in (r.value or ())]
        acked = [add.complete_index] if add.type == "ok" and add.complete_index is not None else []
        known = min(seen + acked) if seen + acked else None
        after = known if known is not None else add.complete_index
        later = [r for r in reads if after is not None and r.invoke_index > after]
        holding_ends = [r.complete_index for r in reads if element in (r.value or ())]
        gone_after = max(holding_ends) if holding_ends else known
        if not later:
            never.append(element)
        elif known is None:
            continue
        elif any(r.invoke_index > gone_after and element not in (r.value or ()) for r in reads):
            lost.append(element)
        elif any(element not in (r.value or ()) for r in later):
            stale.append(element)
    return lost, stale, never


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "read"]), st.integers(0, 5),
                          st.sampled_from(["ok", "ok", "fail", "info"]),
                          st.lists(st.integers(0, 5), max_size=4)), min_size=1, max_size=12),
       st.randoms(use_true_random=False))
def test_set_checker_matches_its_definition(specs: list[tuple[str, int, str, list[int]]], rnd: Any) -> None:
    rows: list[dict[str, Any]] = []
    open_ops: dict[int, tuple[str, int, str, list[int]]] = {}
    for p, spec in enumerate(specs):
        f, element, _, _ = spec
        rows.append({"process": p, "type": "invoke", "f": f, "value": None if f == "read" else element})
        open_ops[p] = spec
        while open_ops and rnd.random() < 0.6:
            q = rnd.choice(sorted(open_ops))
            f, element, outcome, seen = open_ops.pop(q)
            value = sorted(set(seen)) if f == "read" else element
            rows.append({"process": q, "type": outcome, "f": f, "value": value})
    result = sets.check(from_dicts(rows))
    assert (result.lost, result.stale, result.never_read) == naive_set_verdicts(rows)
