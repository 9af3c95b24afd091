"""Checks a finished run's final state against its history: no acknowledged write may be lost.

Each key lives on one node in single-copy mode and its versions are that storage's LSNs, which only
grow while synced data survives. So at the end of a run, for every key:

- the value read must come from a write that did not definitely fail, with the version it was acknowledged with;
- no acknowledged write of the key may have a version above the final one (it would have been lost);
- a key read as absent needs, for each acknowledged write, a delete that could have come after it.

Under ``fsync = "always"`` every run must pass; under ``never`` a crash makes some runs fail, which is
exactly the cost of that policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvstore.errors import ErrorCode
from kvstore.messages import BatchPutOp, BatchResults, CasOp, Deleted, DeleteOp, Failure, Found, PutOp, Result, Written
from kvstore.sim.workload import OpRecord


@dataclass(frozen=True)
class WriteAttempt:
    key: str
    # None for a delete.
    value: bytes | None
    # The acknowledged version of a write; None for a delete or an unknown outcome (a timeout, a crash).
    version: int | None
    invoke_ms: int
    complete_ms: int

    @property
    def acknowledged(self) -> bool:
        return self.version is not None


def _definite_failure(result: Result) -> bool:
    if not isinstance(result, Failure):
        return False
    try:
        return ErrorCode(result.code).definite
    except ValueError:
        return False  # an unknown code promises nothing


def _attempt(record: OpRecord, key: str, value: bytes | None, result: Result) -> WriteAttempt | None:
    """The write ``result`` says happened (or may have happened), None if it certainly did not."""
    if _definite_failure(result) or (isinstance(result, Deleted) and not result.existed):
        # A delete that removed nothing cannot explain a key's absence later either.
        return None
    version = result.version if isinstance(result, Written) else None
    return WriteAttempt(key, value, version, record.invoke_ms, record.complete_ms)


def write_attempts(history: Iterable[OpRecord]) -> dict[str, list[WriteAttempt]]:
    by_key: dict[str, list[WriteAttempt]] = {}
    for record in history:
        op, result = record.op, record.result
        found: list[WriteAttempt | None] = []
        if isinstance(op, PutOp):
            found.append(_attempt(record, op.key, op.value, result))
        elif isinstance(op, DeleteOp):
            found.append(_attempt(record, op.key, None, result))
        elif isinstance(op, CasOp):
            found.append(_attempt(record, op.key, op.new, result))
        elif isinstance(op, BatchPutOp):
            entries = result.results if isinstance(result, BatchResults) else (result,) * len(op.items)
            pairs = zip(op.items, entries, strict=True)
            found.extend(_attempt(record, item.key, item.value, entry) for item, entry in pairs)
        for attempt in found:
            if attempt is not None:
                by_key.setdefault(attempt.key, []).append(attempt)
    return by_key


def lost_writes(history: Iterable[OpRecord], final: Mapping[str, Found | None]) -> list[str]:
    """One line per violation; ``final`` maps every key the history wrote to what a read returns at the end."""
    violations: list[str] = []
    for key, attempts in sorted(write_attempts(history).items()):
        if key not in final:
            raise ValueError(f"no final read of {key!r}, which the history writes")
        state = final[key]
        acknowledged = [a for a in attempts if a.acknowledged]
        if state is None:
            for write in acknowledged:
                if not any(d.value is None and d.complete_ms >= write.invoke_ms for d in attempts):
                    violations.append(f"{key}: acknowledged write {write.value!r} v{write.version} is gone")
            continue
        writers = [a for a in attempts if a.value == state.value]
        if not writers:
            violations.append(f"{key}: holds {state.value!r} v{state.version}, which no write could have made")
        elif writers[0].acknowledged and writers[0].version != state.version:
            acked_as = writers[0].version
            violations.append(f"{key}: holds {state.value!r} as v{state.version}, acknowledged as v{acked_as}")
        violations.extend(
            f"{key}: acknowledged write {w.value!r} v{w.version} lost; the key holds v{state.version}"
            for w in acknowledged
            if w.version is not None and w.version > state.version
        )
    return violations
