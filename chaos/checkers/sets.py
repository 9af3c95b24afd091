"""The set checker (as Jepsen's set-full and Maelstrom's set workload).

Ops: ``add`` of a unique element (``value``) and ``read`` of the whole set (``value`` = list). For each
element the checker finds when it became *known* (its add was acknowledged, or a read saw it), then
looks at every read invoked after that:

- **lost**: known, and absent from a read that began after the last read holding it had ended (or, if
  no read ever held it, absent from a read that began after it was known): it is gone for good;
- **stale**: absent from some read that began after it was known, but not lost (a read that went back
  in time, or one concurrent with the last read that saw it);
- **never read**: no read began after its add completed, so nothing can be said;
- **unexpected**: a read holds an element that was never added, or whose add definitely failed.

The history is valid when nothing is lost or unexpected; stale reads are reported and make it invalid
only with ``allow_stale=False`` (a linearizable set must never serve one).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History, Op

_INFINITY = 1 << 62


@dataclass
class SetResult:
    valid: bool
    ok_count: int = 0
    lost: list[Any] = field(default_factory=list)
    stale: list[Any] = field(default_factory=list)
    never_read: list[Any] = field(default_factory=list)
    unexpected: list[Any] = field(default_factory=list)
    reads: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "ok_count": self.ok_count,
            "lost_count": len(self.lost),
            "lost": self.lost,
            "stale_count": len(self.stale),
            "stale": self.stale,
            "never_read_count": len(self.never_read),
            "never_read": self.never_read,
            "unexpected_count": len(self.unexpected),
            "unexpected": self.unexpected,
            "reads": self.reads,
        }


def check(history: History, allow_stale: bool = True) -> SetResult:
    ops = history.ops()
    adds: dict[Any, Op] = {}
    for op in ops:
        if op.f == "add":
            adds[op.invoke.value] = op
    reads = [op for op in ops if op.f == "read" and op.type == "ok"]
    read_sets = [(op, frozenset(op.value or ())) for op in reads]

    known_at: dict[Any, int] = {}
    for element, add in adds.items():
        if add.type == "ok" and add.complete_index is not None:
            known_at[element] = add.complete_index
    for op, present in read_sets:
        assert op.complete_index is not None
        for element in present:
            if element in adds and op.complete_index < known_at.get(element, _INFINITY):
                known_at[element] = op.complete_index

    result = SetResult(valid=True, reads=len(reads))
    failed = {e for e, add in adds.items() if add.type == "fail"}
    unexpected: set[Any] = set()
    for _, present in read_sets:
        unexpected |= {e for e in present if e not in adds or e in failed}
    result.unexpected = sorted(unexpected, key=repr)

    # Reads in invocation order; for each element, the positions of the reads that hold it and the latest
    # end of such a read.
    read_starts = [op.invoke_index for op, _ in read_sets]
    holding: dict[Any, list[int]] = {}
    last_held_end: dict[Any, int] = {}
    for position, (op, present) in enumerate(read_sets):
        assert op.complete_index is not None
        for element in present:
            holding.setdefault(element, []).append(position)
            last_held_end[element] = max(last_held_end.get(element, -1), op.complete_index)
    last_start = read_starts[-1] if read_starts else -1
    for element in sorted(adds, key=repr):
        if element in failed:
            continue
        known = known_at.get(element)
        after = known if known is not None else adds[element].complete_index
        first_later = len(read_sets) if after is None else bisect_right(read_starts, after)
        if first_later >= len(read_sets):
            result.never_read.append(element)
            continue
        if known is None:
            # An add of unknown outcome that no read has seen: it may simply never have happened.
            continue
        # No read holding it can begin after the last one holding it ended, so any read that does lacks it.
        if last_start > last_held_end.get(element, known):
            result.lost.append(element)
        elif len(holding.get(element, [])) - bisect_left(holding.get(element, []), first_later) < (
            len(read_sets) - first_later
        ):
            result.stale.append(element)
        else:
            result.ok_count += 1
    result.valid = not result.lost and not result.unexpected and (allow_stale or not result.stale)
    return result
