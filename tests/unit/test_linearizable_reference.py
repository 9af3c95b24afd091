"""The linearizability checker against a brute-force reference on random small histories.

The reference tries every order of every subset of may-have-happened ops that respects real time, so it
is right by construction; the checker must agree with it on every history Hypothesis can find.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import linearizable as lin
from chaos.history import History, Op, from_dicts

VALUES = [0, 1, 2]


def brute_force(history: History) -> bool:
    # Built op by op, without the checker's pruning of unseen appends, so the pruning is checked too.
    by_key: dict[Any, list[lin._ModelOp]] = {}
    for op in history.ops():
        model_op = lin._model_op(op)
        if model_op is not None:
            by_key.setdefault(op.key, []).append(model_op)
    return all(_brute_key(ops) for ops in by_key.values())


def _brute_key(ops: list[lin._ModelOp]) -> bool:
    required = [o for o in ops if o.required]
    optional = [o for o in ops if not o.required]
    for r in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, r):
            group = required + list(chosen)
            for order in itertools.permutations(group):
                if _respects_real_time(order) and _legal(order, None):
                    return True
    return False


def _respects_real_time(order: tuple[lin._ModelOp, ...]) -> bool:
    return not any(later.ret < earlier.call for i, earlier in enumerate(order) for later in order[i + 1 :])


def _legal(order: tuple[lin._ModelOp, ...], state: Any) -> bool:
    for o in order:
        possible, state = lin._step(state, o.kind, o.a, o.b)
        if not possible:
            return False
    return True


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 7 ops from 3 processes on one or two keys, interleaved at random, any outcome."""
    n_ops = draw(st.integers(1, 7))
    specs = []
    for _ in range(n_ops):
        f = draw(st.sampled_from(["read", "write", "cas", "append", "append"]))
        key = draw(st.sampled_from(["x", "y"]))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info", "refused"]))
        if f == "read":
            value = draw(st.sampled_from([*VALUES, None]))
        elif f == "write":
            value = draw(st.sampled_from(VALUES))
        elif f == "cas":
            value = [draw(st.sampled_from([*VALUES, None])), draw(st.sampled_from(VALUES))]
        else:
            value = draw(st.sampled_from(["a", "b"]))
        specs.append((f, key, outcome, value))
    # Interleave: each op is an invoke then a completion; processes run ops one at a time.
    events: list[dict[str, Any]] = []
    pending: dict[int, tuple[str, str, str, Any]] = {}
    queue = list(specs)
    process_ids = iter(range(1000))
    while queue or pending:
        can_invoke = bool(queue) and len(pending) < 3
        if can_invoke and (not pending or draw(st.booleans())):
            f, key, outcome, value = queue.pop(0)
            p = next(process_ids)
            pending[p] = (f, key, outcome, value)
            events.append({"process": p, "type": "invoke", "f": f, "key": key, "value": None if f == "read" else value})
        else:
            p = draw(st.sampled_from(sorted(pending)))
            f, key, outcome, value = pending.pop(p)
            if outcome == "refused" and f != "cas":
                outcome = "fail"
            if outcome == "refused":
                events.append({"process": p, "type": "fail", "f": f, "key": key, "value": value,
                               "error": "precondition_failed"})
            elif outcome == "info" and draw(st.booleans()):
                continue  # never completes: open to the end of the history
            else:
                events.append({"process": p, "type": outcome, "f": f, "key": key, "value": value})
    return events


@settings(max_examples=1500, deadline=None)
@given(histories())
def test_checker_agrees_with_brute_force(rows: list[dict[str, Any]]) -> None:
    history = from_dicts(rows)
    expected = brute_force(history)
    result = lin.check(history, time_limit_s=30)
    assert result.valid is expected, rows


@settings(max_examples=800, deadline=None)
@given(histories())
def test_failing_stretch_is_a_proof_on_its_own(rows: list[dict[str, Any]]) -> None:
    history = from_dicts(rows)
    result = lin.check(history, time_limit_s=30)
    if result.valid is not False:
        return
    assert result.failure is not None
    stretch: list[Op] = result.failure.stretch
    assert stretch, "a failure must name at least one op"
    ops = lin.model_ops_by_key(history)[result.failure.key]
    by_invoke = {o.call: o for o in ops}
    chosen = [by_invoke[op.invoke_index] for op in stretch]
    # The stretch, with its may-or-may-not ops as such, cannot be linearized from the initial state
    # (absent) or, where the checker says so, from any state at all.
    optional = result.failure.stretch_optional
    window = [lin._ModelOp(o.op, o.kind, o.a, o.b, o.call, lin._NEVER, False) if o.call in optional else o
              for o in chosen]
    starts = [None] if result.failure.from_initial_state else [None, *VALUES, "a", "b", "ab", "ba"]
    assert all(not _brute_from_any_state(window, s) for s in starts)


def _brute_from_any_state(ops: list[lin._ModelOp], init: Any) -> bool:
    required = [o for o in ops if o.required]
    optional = [o for o in ops if not o.required]
    for r in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, r):
            for order in itertools.permutations(required + list(chosen)):
                if _respects_real_time(order) and _legal(order, init):
                    return True
    return False
