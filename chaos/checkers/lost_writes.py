"""Lost acknowledged writes in a register history, each with the read that proves it lost.

Writes (``write``/``put``, and ``cas`` for its new value) must carry values unique per key, as the
register workload's do, so that a read's value names the write that produced it. An acknowledged write
``w`` is **lost** when a read that began after ``w`` completed returned a value strictly older than
``w``: produced by a write that completed before ``w`` was even invoked, or the initial absent value.
Nothing overwrote ``w`` in between that the read could be showing instead, so ``w``'s effect vanished.
(The linearizability checker rejects such a history too; this names every write that disappeared,
which is what modes that are allowed to lose writes, like async replication, are measured by.)

A read that shows an older value is only *stale* if ``w`` itself shows up again in a read that began
after it ended (or in the final state): then ``w`` was not lost, that read lagged. Stale reads are
counted too (``stale_reads``, each read once, with the newer write it missed): they do not make this
check fail, since a lagging read loses nothing, but they are what unsafe leader reads are measured by
(the linearizability checker rejects them). A write that is overwritten after vanishing still counts
as lost, since its effect disappeared. Modes that serve stale
reads by design (follower reads, sloppy quorums) should be judged with ``final_only=True``: then only
the final observation of each key (the final state, or the last read) can prove a write lost.

The final state after the run, if given, acts as one more read that began after every op.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History, Op

_WRITE_FS = ("write", "put", "cas")
_FINAL = 1 << 62


@dataclass(frozen=True)
class LostWrite:
    key: Any
    write: Op
    # The read that proves it: an op of the history, or None for the final state.
    read: Op | None
    read_value: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "write": self.write.invoke.to_json(),
            "seen_instead": self.read_value,
            "by": "final state" if self.read is None else self.read.invoke.to_json(),
        }


@dataclass(frozen=True)
class StaleRead:
    key: Any
    read: Op
    # An acknowledged write that completed before the read began, and that a later observation shows.
    missed: Op

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "read": self.read.invoke.to_json(), "seen": self.read.value,
                "missed": self.missed.invoke.to_json()}


@dataclass
class LostWritesResult:
    valid: bool
    acknowledged: int
    lost: list[LostWrite] = field(default_factory=list)
    stale: list[StaleRead] = field(default_factory=list)
    # Keys skipped because their written values are not unique (a read cannot name its write).
    ambiguous_keys: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "acknowledged_writes": self.acknowledged,
            "lost_count": len(self.lost),
            "lost": [w.to_json() for w in self.lost[:50]],
            "stale_read_count": len(self.stale),
            "stale_reads": [r.to_json() for r in self.stale[:50]],
            "ambiguous_keys": self.ambiguous_keys,
        }


def _written_value(op: Op) -> Any:
    return op.invoke.value[1] if op.f == "cas" else op.invoke.value


def check(history: History, final_values: Mapping[Any, Any] | None = None, final_only: bool = False) -> (
    LostWritesResult
):
    writes: dict[Any, list[Op]] = defaultdict(list)
    reads: dict[Any, list[Op]] = defaultdict(list)
    deleted_keys: set[Any] = set()
    for op in history.ops():
        if op.f in _WRITE_FS and op.type != "fail":
            writes[op.key].append(op)
        elif op.f in ("read", "get") and op.type == "ok":
            reads[op.key].append(op)
        elif op.f == "delete":
            deleted_keys.add(op.key)
    result = LostWritesResult(valid=True, acknowledged=sum(1 for ws in writes.values() for w in ws if w.type == "ok"))
    for key in sorted(writes, key=repr):
        values = [_written_value(w) for w in writes[key]]
        if len(set(values)) != len(values) or None in values:
            result.ambiguous_keys.append(key)
            continue
        producer = {_written_value(w): w for w in writes[key]}
        acked = sorted((w for w in writes[key] if w.type == "ok"), key=lambda w: w.complete_index or 0)
        acked_done = [w.complete_index or 0 for w in acked]
        acked_invoked = [w.invoke.index for w in acked]
        acked_values = [_written_value(w) for w in acked]
        observations: list[tuple[int, Any, Op | None]] = [(r.invoke.index, r.value, r) for r in reads[key]]
        if final_values is not None:
            observations.append((_FINAL, final_values.get(key), None))
        # For each value, when the latest observation of it began: a write seen again is not lost.
        last_seen: dict[Any, int] = {}
        for began, value, _ in observations:
            last_seen[value] = max(last_seen.get(value, -1), began)
        if final_only:
            observations = sorted(observations, key=lambda o: o[0])[-1:]
        lost_here: dict[int, LostWrite] = {}
        stale_here: dict[int, StaleRead] = {}
        for began, value, read in observations:
            ended = _FINAL if read is None else _complete_or_never(read)
            if value is None and key in deleted_keys:
                continue  # absent because of a delete: says nothing about the writes
            source = producer.get(value)
            if source is None and value is not None:
                continue  # a value nobody wrote is the linearizability checker's business
            # The observed value is older than every acked write invoked after its producer completed and
            # completed before the read began. A write invoked after ``older_than`` also completed after
            # it, so the candidates lie between two bisections of the writes in completion order (the
            # earlier ones were all invoked before ``older_than``): linear in the candidates, not in
            # every earlier write.
            older_than = -1 if source is None else _complete_or_never(source)
            for i in range(bisect_right(acked_done, older_than), bisect_left(acked_done, began)):
                invoked = acked_invoked[i]
                if invoked <= older_than or invoked in lost_here:
                    continue
                if last_seen.get(acked_values[i], -1) > ended:
                    # Seen again later: the write was not lost, this read was stale (the final state never is).
                    if read is not None and read.invoke.index not in stale_here:
                        stale_here[read.invoke.index] = StaleRead(key, read, acked[i])
                    continue
                lost_here[invoked] = LostWrite(key, acked[i], read, value)
        result.lost.extend(lost_here[i] for i in sorted(lost_here))
        result.stale.extend(stale_here[i] for i in sorted(stale_here))
    result.valid = not result.lost
    return result


def _complete_or_never(op: Op) -> int:
    """Index after which ``op`` is certainly done; an op of unknown outcome is never certainly done."""
    return op.complete_index if op.complete_index is not None else _FINAL
