"""Checker cases from review: an independent reference implementation, and the edge cases it found."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import linearizable as lin
from chaos.checkers import lost_writes, sets
from chaos.history import from_dicts

Row = dict[str, Any]


def _op(process: int, f: str, key: Any, invoke_value: Any, outcome: str, value: Any) -> list[Row]:
    return [
        {"process": process, "type": "invoke", "f": f, "key": key, "value": invoke_value},
        {"process": process, "type": outcome, "f": f, "key": key, "value": value},
    ]


# ---------------------------------------------------------------- an independent reference

# The reference test in tests/unit shares ``_step`` and ``model_ops_by_key`` with the checker. This one
# pairs events and maps outcomes itself, with its own register model, and adds delete, process ids
# reused after ``info``, processes retired with no completion, and reads of strings.


def _reference_ops(rows: list[Row]) -> list[dict[str, Any]]:
    open_by_process: dict[int, int] = {}
    ops: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if row["type"] == "invoke":
            open_by_process[row["process"]] = len(ops)
            ops.append({"f": row["f"], "key": row["key"], "arg": row["value"], "call": index, "ret": None,
                        "type": "info", "result": None, "error": None})
            continue
        op = ops[open_by_process.pop(row["process"])]
        op.update(type=row["type"], result=row.get("value"), error=row.get("error"))
        if row["type"] != "info":
            op["ret"] = index
    kept = []
    for op in ops:
        refused = op["type"] == "fail" and op["f"] == "cas" and op["error"] == "precondition_failed"
        if (op["type"] == "fail" and not refused) or (op["type"] == "info" and op["f"] == "read"):
            continue
        kept.append(dict(op, must=op["type"] != "info", refused=refused))
    return kept


def _reference_apply(state: Any, op: dict[str, Any]) -> tuple[bool, Any]:
    f = op["f"]
    if f == "read":
        return state == op["result"] and type(state) is type(op["result"]), state
    if f == "write":
        return True, op["arg"]
    if f == "delete":
        return True, None
    if f == "cas":
        expected, new = op["arg"]
        if op["refused"]:
            return state != expected, state
        return state == expected, new
    assert f == "append"
    if state is None:
        return isinstance(op["arg"], str), op["arg"]
    return isinstance(state, str), (state + op["arg"] if isinstance(state, str) else state)


def _reference_linearizable(ops: list[dict[str, Any]]) -> bool:
    must = [o for o in ops if o["must"]]
    optional = [o for o in ops if not o["must"]]
    for r in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, r):
            for order in itertools.permutations(must + list(chosen)):
                if any(b["ret"] is not None and b["ret"] < a["call"]
                       for i, a in enumerate(order) for b in order[i + 1:]):
                    continue
                state: Any = None
                for o in order:
                    possible, state = _reference_apply(state, o)
                    if not possible:
                        break
                else:
                    return True
    return False


@st.composite
def _histories(draw: st.DrawFn) -> list[Row]:
    specs = []
    for _ in range(draw(st.integers(1, 7))):
        f = draw(st.sampled_from(["read", "write", "cas", "append", "delete"]))
        if f == "read":
            value: Any = draw(st.sampled_from([0, 1, 2, None, "a", "ab"]))
        elif f == "write":
            value = draw(st.sampled_from([0, 1, 2, None]))
        elif f == "cas":
            value = [draw(st.sampled_from([0, 1, None])), draw(st.sampled_from([0, 1, 2]))]
        else:
            value = draw(st.sampled_from(["a", "b"])) if f == "append" else None
        key = draw(st.sampled_from(["x", "x", "y"]))
        specs.append((f, key, draw(st.sampled_from(["ok", "ok", "fail", "info", "refused"])), value))
    rows: list[Row] = []
    running: dict[int, tuple[str, str, str, Any]] = {}
    idle, next_process = [0, 1, 2], 3
    while specs or running:
        if specs and idle and (not running or draw(st.booleans())):
            f, key, outcome, value = specs.pop(0)
            process = idle.pop(0)
            running[process] = (f, key, outcome, value)
            invoked = None if f == "read" else value
            rows.append({"process": process, "type": "invoke", "f": f, "key": key, "value": invoked})
            continue
        process = draw(st.sampled_from(sorted(running)))
        f, key, outcome, value = running.pop(process)
        if outcome == "info" and draw(st.booleans()):
            idle.append(next_process)  # never completes; the client moves on as a new process
            next_process += 1
            continue
        if outcome == "refused" and f == "cas":
            rows.append({"process": process, "type": "fail", "f": f, "key": key, "value": None,
                         "error": "precondition_failed"})
        else:
            rows.append({"process": process, "type": "fail" if outcome == "refused" else outcome, "f": f, "key": key,
                         "value": value})
        idle.append(process)  # the same id is reused, also after an info
    return rows


@settings(max_examples=400, deadline=None)
@given(_histories())
def test_checker_agrees_with_an_independent_reference(rows: list[Row]) -> None:
    expected = all(
        _reference_linearizable([o for o in _reference_ops(rows) if o["key"] == key]) for key in ("x", "y")
    )
    assert lin.check(from_dicts(rows), time_limit_s=30).valid is expected, rows


# ---------------------------------------------------------------- edge cases found in review


def test_a_read_of_another_json_type_is_not_the_value_written() -> None:
    rows = _op(0, "write", "x", True, "ok", True) + _op(1, "read", "x", None, "ok", 1.0)
    assert lin.check(from_dicts(rows)).valid is False


def test_set_element_seen_by_a_read_that_ends_later_is_stale_not_lost() -> None:
    # Read A begins, read B begins and ends without 1, then A ends with 1: in Jepsen's set-full an element
    # is lost only if the last read missing it began after the last read holding it ended.
    rows = [
        *_op(0, "add", "s", 1, "ok", 1),
        {"process": 1, "type": "invoke", "f": "read", "key": "s", "value": None},
        {"process": 2, "type": "invoke", "f": "read", "key": "s", "value": None},
        {"process": 2, "type": "ok", "f": "read", "key": "s", "value": []},
        {"process": 1, "type": "ok", "f": "read", "key": "s", "value": [1]},
    ]
    result = sets.check(from_dicts(rows))
    assert (result.lost, result.stale, result.valid) == ([], [1], True)


def test_a_write_seen_later_and_in_the_final_state_is_not_lost() -> None:
    rows = (_op(0, "write", "x", 1, "ok", 1) + _op(0, "write", "x", 2, "ok", 2)
            + _op(1, "read", "x", None, "ok", 1) + _op(1, "read", "x", None, "ok", 2))
    result = lost_writes.check(from_dicts(rows), final_values={"x": 2})
    assert result.lost == []
