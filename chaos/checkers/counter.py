"""The counter checker, as Jepsen's counter checker: every read within the range real time allows.

Ops: ``add`` of a delta (``value``, may be negative) and ``read`` of the total. Every ok read must lie
within the range its concurrency allows (a linearizable counter's promise; an eventually consistent
counter, like Maelstrom's g-counter, is only held to this for its final reads):

- adds acknowledged before the read was invoked *must* be counted;
- adds invoked before the read completed whose outcome is ok, info or unknown *may* be counted;
- adds that definitely failed are never counted.

So ``lower = sum(certain) + sum(negative possible)`` and ``upper = sum(certain) + sum(positive possible)``.
The final read is the one that shows whether increments were lost.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History


@dataclass
class CounterError:
    read_index: int
    value: Any
    lower: int
    upper: int

    def to_json(self) -> dict[str, Any]:
        return {"read_index": self.read_index, "value": self.value, "expected_range": [self.lower, self.upper]}


@dataclass
class CounterResult:
    valid: bool
    reads: int
    errors: list[CounterError] = field(default_factory=list)
    final_value: Any = None
    final_range: tuple[int, int] | None = None
    acknowledged_sum: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "reads": self.reads,
            "error_count": len(self.errors),
            "errors": [e.to_json() for e in self.errors[:20]],
            "final_value": self.final_value,
            "final_range": list(self.final_range) if self.final_range else None,
            "acknowledged_sum": self.acknowledged_sum,
        }


def check(history: History) -> CounterResult:
    ops = history.ops()
    adds = [op for op in ops if op.f == "add" and op.type != "fail"]
    reads = [op for op in ops if op.f == "read" and op.type == "ok"]
    for op in adds:
        if not isinstance(op.invoke.value, int) or isinstance(op.invoke.value, bool):
            raise ValueError(f"{history.source}:{op.invoke.line}: a counter add needs a whole-number value")
    result = CounterResult(valid=True, reads=len(reads))
    result.acknowledged_sum = sum(op.invoke.value for op in adds if op.type == "ok")
    # Prefix sums make each read O(log n): acknowledged adds by completion, all adds by invocation.
    acked = sorted((op.complete_index, op.invoke.value) for op in adds if op.complete_index is not None
                   and op.type == "ok")
    acked_at = [i for i, _ in acked]
    acked_sum, acked_pos, acked_neg = _prefix_sums([d for _, d in acked])
    invoked = sorted((op.invoke_index, op.invoke.value) for op in adds)
    invoked_at = [i for i, _ in invoked]
    _, invoked_pos, invoked_neg = _prefix_sums([d for _, d in invoked])
    for read in reads:
        assert read.complete_index is not None
        c = bisect_left(acked_at, read.invoke_index)
        v = bisect_left(invoked_at, read.complete_index)
        lower = acked_sum[c] + invoked_neg[v] - acked_neg[c]
        upper = acked_sum[c] + invoked_pos[v] - acked_pos[c]
        value = read.value
        if not isinstance(value, int) or isinstance(value, bool) or not lower <= value <= upper:
            result.errors.append(CounterError(read.invoke_index, value, lower, upper))
        result.final_value, result.final_range = value, (lower, upper)
    result.valid = not result.errors
    return result


def _prefix_sums(deltas: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Running totals of all deltas, of the positive ones and of the negative ones (index i = first i)."""
    total, pos, neg = [0], [0], [0]
    for d in deltas:
        total.append(total[-1] + d)
        pos.append(pos[-1] + max(d, 0))
        neg.append(neg[-1] + min(d, 0))
    return total, pos, neg
