"""Convergence: after heal and quiet time, every replica of a key holds the same data.

Input is what each node holds at the end (``{node: {key: value}}``) and, optionally, which nodes should
hold each key. A key diverges when two of its replicas disagree, or when a replica that should hold it
does not. Lost acknowledged writes are checked against the converged values by ``lost_writes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_ABSENT = "<absent>"


@dataclass
class Divergence:
    key: Any
    values: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "values": self.values}


@dataclass
class ConvergenceResult:
    valid: bool
    keys: int
    diverged: list[Divergence] = field(default_factory=list)
    # The value every replica agrees on, for each key that converged.
    converged: dict[Any, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "keys": self.keys,
            "diverged_count": len(self.diverged),
            "diverged": [d.to_json() for d in self.diverged[:50]],
        }


def check(
    final_states: Mapping[str, Mapping[Any, Any]],
    replicas_of: Callable[[Any], list[str]] | None = None,
) -> ConvergenceResult:
    keys: set[Any] = set()
    for state in final_states.values():
        keys.update(state)
    result = ConvergenceResult(valid=True, keys=len(keys))
    for key in sorted(keys, key=repr):
        holders = replicas_of(key) if replicas_of is not None else sorted(n for n, s in final_states.items() if key
                                                                          in s)
        values = {node: final_states.get(node, {}).get(key, _ABSENT) for node in holders}
        distinct = {repr(v) for v in values.values()}
        if len(distinct) > 1:
            result.diverged.append(Divergence(key, values))
        elif values:
            value = next(iter(values.values()))
            result.converged[key] = None if value == _ABSENT else value
    result.valid = not result.diverged
    return result
