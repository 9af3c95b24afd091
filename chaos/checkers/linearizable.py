"""Linearizability of a key-value register, checked per key (P-compositionality).

The search is Wing & Gong's, with Lowe's memoisation: call and return entries sit in a doubly linked
list in real-time order; the search linearizes any call whose op the model accepts, lifting it (and its
return) out of the list, and backtracks when it reaches a return whose op is still unlinearized. A
(linearized set, state) pair seen before is never explored again, which is what keeps the search
tractable.

How each outcome is treated:
- ``ok``: happened within its interval; it must be linearized.
- ``fail``: did not happen; dropped. Except a ``cas`` failed with ``precondition_failed``: it ran and saw
  a value other than its expected one, so it must be linearized as a read that the value was not that.
- ``info`` (or no completion): may have happened at any time after its invocation, or never. Its return
  is at the end of time; a read of unknown outcome says nothing and is dropped.

On failure the checker names the key and a shortest stretch of ops that cannot be linearized. First it
finds the earliest failing prefix (linearizability is prefix-closed: the prefix up to event ``c`` is the
ops invoked before ``c``, those still running at ``c`` may or may not take effect). Then it finds the
latest start ``s`` whose window ``[s, c)`` still fails on its own from an *unknown* initial state (ops
still running at ``s`` may or may not take effect inside the window). Any linearization of the whole
history restricts to one of the window, so a failing window is a self-contained proof.

Keys are checked smallest first and checking stops at the first key that fails. Every search watches a
deadline; past it the verdict is ``"unknown"``, never a guess.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chaos.history import PRECONDITION_FAILED, History, HistoryError, Op

Verdict = bool | Literal["unknown"]

READ_FS = frozenset({"read", "get"})
WRITE_FS = frozenset({"write", "put"})
SUPPORTED_FS = READ_FS | WRITE_FS | {"cas", "append", "delete"}

# Model op kinds.
_READ, _WRITE, _CAS, _CAS_REFUSED, _APPEND, _DELETE = range(6)
_NEVER = 1 << 62  # return position of an op that may complete at any time, or never


@dataclass(frozen=True)
class _Typed:
    """A JSON value whose type must match as well: JSON's true, 1 and 1.0 are three different values."""

    kind: str
    value: Any


def typed(value: Any) -> Any:
    """``value`` made comparable by type and value (ints, strings and null stay as they are)."""
    if isinstance(value, bool):
        return _Typed("bool", value)
    if isinstance(value, float):
        return _Typed("float", "nan" if value != value else value)
    if isinstance(value, tuple):
        return tuple(typed(v) for v in value)
    return value


class _Unknown:
    """The initial state of a window: any value at all, fixed by the first op that observes it."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


@dataclass(frozen=True)
class _ModelOp:
    op: Op
    kind: int
    a: Any
    b: Any
    call: int  # history index of the invocation
    ret: int  # history index of the completion, or _NEVER
    required: bool  # must be linearized (False: may or may not take effect)


def _step(state: Any, kind: int, a: Any, b: Any) -> tuple[bool, Any]:
    """Apply one op to the register: (is the op possible in this state, the state after it)."""
    if kind == _READ:
        if state is UNKNOWN:
            return True, a
        return state == a, state
    if kind == _WRITE:
        return True, a
    if kind == _CAS:
        if state is UNKNOWN:
            return True, b
        return (True, b) if state == a else (False, state)
    if kind == _CAS_REFUSED:
        # Knowing only "not a" about an unknown state leaves it unknown: weaker, so still sound.
        return (state is UNKNOWN or state != a), state
    if kind == _APPEND:
        if state is UNKNOWN:
            return True, UNKNOWN
        if state is None:
            return isinstance(a, str), a
        if isinstance(state, str) and isinstance(a, str):
            return True, state + a
        return False, state
    if kind == _DELETE:
        return True, None
    raise AssertionError(f"unknown model op kind {kind}")


def _model_op(op: Op) -> _ModelOp | None:
    """The op as the register model sees it, or None if it carries no information."""
    f = op.f
    outcome = op.type
    ret = _NEVER if op.complete_index is None else op.complete_index
    if outcome == "fail":
        if f == "cas" and op.error == PRECONDITION_FAILED:
            expected, _ = _cas_args(op)
            return _ModelOp(op, _CAS_REFUSED, expected, None, op.invoke_index, ret, True)
        return None
    required = outcome == "ok"
    if f in READ_FS:
        if not required:
            return None
        return _ModelOp(op, _READ, typed(op.value), None, op.invoke_index, ret, True)
    if f in WRITE_FS:
        return _ModelOp(op, _WRITE, typed(op.invoke.value), None, op.invoke_index, ret, required)
    if f == "cas":
        expected, new = _cas_args(op)
        return _ModelOp(op, _CAS, typed(expected), typed(new), op.invoke_index, ret, required)
    if f == "append":
        return _ModelOp(op, _APPEND, typed(op.invoke.value), None, op.invoke_index, ret, required)
    if f == "delete":
        return _ModelOp(op, _DELETE, None, None, op.invoke_index, ret, required)
    raise HistoryError("<history>", op.invoke.line, f"the register model has no op {f!r}")


def _cas_args(op: Op) -> tuple[Any, Any]:
    value = op.invoke.value
    if not isinstance(value, tuple) or len(value) != 2:
        raise HistoryError("<history>", op.invoke.line, "a cas value must be [expected, new]")
    return value[0], value[1]


# The memo may use about this much memory per key before the verdict becomes "unknown".
DEFAULT_MAX_MEMO_BYTES = 1 << 30
# Per memo entry: the tuple, the set slot and the state reference, besides the bitset itself.
_MEMO_ENTRY_OVERHEAD_BYTES = 120


class _OutOfTime(Exception):
    """The search ran past its deadline or its memory budget; the message says which."""


def _search(ops: Sequence[_ModelOp], init: Any, deadline: float, max_memo_bytes: int = DEFAULT_MAX_MEMO_BYTES) -> (
    bool
):
    """Wing-Gong-Lowe: can ``ops`` be linearized from state ``init``? Raises _OutOfTime past the deadline
    or when the memo would outgrow ``max_memo_bytes``."""
    n = len(ops)
    if n == 0:
        return True
    max_memo_entries = max(1, max_memo_bytes // (n // 8 + _MEMO_ENTRY_OVERHEAD_BYTES))
    # Entries 1..2n sorted by position; 0 is the head sentinel, 2n+1 the tail sentinel.
    order = sorted(
        [(o.call, 0, i) for i, o in enumerate(ops)] + [(o.ret, 1, i) for i, o in enumerate(ops)],
        key=lambda t: (t[0], t[1], t[2]),
    )
    size = 2 * n + 2
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    op_of = [0] * size
    is_call = [False] * size
    match = [0] * size
    call_entry = [0] * n
    return_entry = [0] * n
    for pos, (_, kind, i) in enumerate(order, start=1):
        op_of[pos] = i
        if kind == 0:
            is_call[pos] = True
            call_entry[i] = pos
        else:
            return_entry[i] = pos
    for i in range(n):
        match[call_entry[i]] = return_entry[i]
    optional_return = [not ops[op_of[e]].required if not is_call[e] and 0 < e < size - 1 else False
                       for e in range(size)]
    kinds = [o.kind for o in ops]
    args_a = [o.a for o in ops]
    args_b = [o.b for o in ops]
    head, tail = 0, size - 1

    def lift(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]
        r = match[e]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    def unlift(e: int) -> None:
        r = match[e]
        nxt[prv[r]] = r
        prv[nxt[r]] = r
        nxt[prv[e]] = e
        prv[nxt[e]] = e

    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []
    linearized = 0
    state = init
    entry = nxt[head]
    steps = 0
    while nxt[head] != tail:
        steps += 1
        if steps & 0x3FF == 0:
            if time.monotonic() > deadline:
                raise _OutOfTime("time limit reached")
            if len(cache) > max_memo_entries:
                raise _OutOfTime(f"search memo over {max_memo_bytes >> 20} MiB")
        if is_call[entry]:
            i = op_of[entry]
            possible, new_state = _step(state, kinds[i], args_a[i], args_b[i])
            if possible:
                new_linearized = linearized | (1 << i)
                memo = (new_linearized, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    lift(entry)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            if optional_return[entry]:
                # Only ops that may never have happened remain ahead: everything required is linearized.
                return True
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]
    return True


def _prefix(ops: Sequence[_ModelOp], cut: int) -> list[_ModelOp]:
    """Ops invoked before event ``cut``; those still running at ``cut`` may or may not take effect."""
    out = []
    for o in ops:
        if o.call >= cut:
            continue
        if o.ret < cut:
            out.append(o)
        elif o.kind not in (_READ, _CAS_REFUSED):
            out.append(_ModelOp(o.op, o.kind, o.a, o.b, o.call, _NEVER, False))
    return out


def _window(prefix: Sequence[_ModelOp], start: int) -> list[_ModelOp]:
    """Ops of ``prefix`` invoked at or after ``start``, plus those still running at ``start`` as optional."""
    out = []
    for o in prefix:
        if o.call >= start:
            out.append(o)
        elif o.ret > start and o.kind not in (_READ, _CAS_REFUSED):
            out.append(_ModelOp(o.op, o.kind, o.a, o.b, o.call, _NEVER, False))
    return out


def _shortest_failing_stretch(ops: Sequence[_ModelOp], deadline: float) -> tuple[bool, list[_ModelOp]]:
    """(from the initial state?, the window's ops, each marked required or may-or-may-not-happen)."""
    cuts = sorted({o.call + 1 for o in ops} | {o.ret + 1 for o in ops if o.ret != _NEVER})
    # Smallest cut whose prefix fails (the whole history fails, so the last cut does).
    lo, hi = 0, len(cuts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _search(_prefix(ops, cuts[mid]), None, deadline):
            lo = mid + 1
        else:
            hi = mid
    prefix = _prefix(ops, cuts[lo])
    starts = sorted({o.call for o in prefix})
    # Latest start whose window still fails from an unknown state (the first start always does or is
    # the whole prefix, which fails from the real initial state).
    lo, hi = 1, len(starts) - 1
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if _search(_window(prefix, starts[mid]), UNKNOWN, deadline):
            hi = mid - 1
        else:
            best = mid
            lo = mid + 1
    if best is None:
        # No later window fails on its own: the proof needs the real initial state, so it is the prefix.
        return True, prefix
    return False, sorted(_window(prefix, starts[best]), key=lambda o: o.call)


@dataclass
class KeyResult:
    key: Any
    valid: Verdict
    op_count: int
    stretch: list[Op] = field(default_factory=list)
    # Invoke indices of stretch ops that may or may not take effect within it (still running at its ends).
    stretch_optional: frozenset[int] = frozenset()
    # True: the stretch fails from the register's initial state (absent); False: from any state at all.
    from_initial_state: bool = False
    # Why the verdict is "unknown" (time or memory ran out).
    reason: str | None = None


@dataclass
class LinearizabilityResult:
    valid: Verdict
    keys_checked: int
    op_count: int
    elapsed_s: float
    failure: KeyResult | None = None
    unknown_keys: list[Any] = field(default_factory=list)
    unknown_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "valid": self.valid,
            "keys_checked": self.keys_checked,
            "ops": self.op_count,
            "time_s": round(self.elapsed_s, 4),
        }
        if self.failure is not None:
            failure = self.failure
            out["key"] = failure.key
            out["from_initial_state"] = failure.from_initial_state
            out["failing_ops"] = [
                {
                    "events": [e.to_json() for e in (op.invoke, op.complete) if e is not None],
                    "may_not_have_happened": op.invoke_index in failure.stretch_optional,
                }
                for op in failure.stretch
            ]
        if self.unknown_keys:
            out["unknown_keys"] = self.unknown_keys
            out["unknown_reason"] = self.unknown_reason
        return out


def model_ops_by_key(history: History) -> dict[Any, list[_ModelOp]]:
    """Each key's model ops; keys are told apart by JSON type too (a key 1 is not the key true)."""
    by_key: dict[Any, list[_ModelOp]] = defaultdict(list)
    for op in history.ops():
        if op.f not in SUPPORTED_FS:
            raise HistoryError(history.source, op.invoke.line, f"the register model has no op {op.f!r}")
        try:
            model_op = _model_op(op)
        except HistoryError as exc:
            raise HistoryError(history.source, exc.line, str(exc).split(": ", 1)[1]) from None
        if model_op is not None:
            by_key[typed(op.key)].append(model_op)
    pruned = {key: _drop_unseen_appends(ops) for key, ops in by_key.items()}
    return {key: ops for key, ops in pruned.items() if ops}


def _drop_unseen_appends(ops: list[_ModelOp]) -> list[_ModelOp]:
    """Drop appends of unknown outcome that no read ever shows: exact, and it keeps the search small.

    On a key with only appends and reads, once an append lands its string is a contiguous part of every
    later state, so an append whose string is in no read cannot have landed before any read; leaving it
    out changes no verdict. (A write, delete or cas on the key breaks that: a write replaces the string,
    and a refused cas observes the state too, so then nothing is dropped.) Without this, each such
    append can be tried at every point of the history.
    """
    if not any(o.kind == _APPEND and not o.required for o in ops):
        return ops
    if any(o.kind not in (_APPEND, _READ) for o in ops):
        return ops
    seen = [o.a for o in ops if o.kind == _READ and isinstance(o.a, str)]
    return [o for o in ops if o.required or o.kind != _APPEND or any(o.a in text for text in seen)]


def check_key(key: Any, ops: Sequence[_ModelOp], deadline: float,
              max_memo_bytes: int = DEFAULT_MAX_MEMO_BYTES) -> KeyResult:
    try:
        if _search(ops, None, deadline, max_memo_bytes):
            return KeyResult(key, True, len(ops))
    except _OutOfTime as exc:
        return KeyResult(key, "unknown", len(ops), reason=str(exc))
    try:
        from_initial, window = _shortest_failing_stretch(ops, deadline)
    except _OutOfTime:
        from_initial, window = True, list(ops)
    optional = frozenset(o.call for o in window if not o.required)
    return KeyResult(key, False, len(ops), [o.op for o in window], optional, from_initial)


def check(history: History, time_limit_s: float = 60.0,
          max_memo_bytes: int = DEFAULT_MAX_MEMO_BYTES) -> LinearizabilityResult:
    """Check every key's register for linearizability; stop at the first key that fails.

    A key whose search runs past ``time_limit_s`` (for the whole history) or whose memo would outgrow
    ``max_memo_bytes`` gets "unknown", never a guess."""
    started = time.monotonic()
    deadline = started + time_limit_s
    by_key = model_ops_by_key(history)
    unknown: list[Any] = []
    reasons: set[str] = set()
    total = sum(len(v) for v in by_key.values())
    checked = 0
    # Small keys first: a failure is found sooner, and a hard key cannot starve the easy ones.
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), repr(k))):
        ops = by_key[key]
        result = check_key(ops[0].op.key, ops, deadline, max_memo_bytes)  # reported as the history names it
        checked += 1
        if result.valid is False:
            return LinearizabilityResult(False, checked, total, time.monotonic() - started, result, unknown)
        if result.valid == "unknown":
            unknown.append(result.key)
            reasons.add(result.reason or "")
    verdict: Verdict = "unknown" if unknown else True
    return LinearizabilityResult(verdict, checked, total, time.monotonic() - started, None, unknown,
                                 "; ".join(sorted(reasons)) or None)
