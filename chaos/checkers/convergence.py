"""Convergence: after heal and quiet time, every replica of a key holds the same data.

``check`` takes what each node holds at the end (``{node: {key: value}}``) and, optionally, which nodes
should hold each key. A key diverges when two of its replicas disagree, or when a replica that should hold
it does not. Lost acknowledged writes are checked against the converged values by ``lost_writes``.

``check_copies`` is what the chaos runners call, on the simulator and on real clusters alike: it takes each
replica's copy of each partition (``Storage.copy_of`` in the simulator, the admin route
``/admin/copies/{partition}`` on a real cluster, the same ``(key, Record)`` pairs), turns each copy into the
checker's input with ``replica_state``, and compares the replicas of every partition that has more than one.
When no partition has, there is nothing to compare, and the result says the check was skipped rather than
claiming a pass.

Leaderless mode keeps a key's whole state (``replication.dvv.Versions``: every sibling with its dot and timestamp,
and the causal context) canonically encoded in the record's ``context`` (``kvstore/version_store.py``). Replicas
are compared by that whole state, not only by their live values: two replicas that serve the same values but
differ in a tombstone or in what their contexts have seen have not converged (the next merge or write would treat
them differently), and the canonical encoding makes equal states equal bytes. A report shows such a state decoded
(``state``). Such a record's version is the replica's own change-feed position (``kvstore/changes.py``), which
differs between replicas that hold the same state, so it is left out (shown as 0).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.storage.base import Record
from replication import dvv

_ABSENT = "<absent>"
# The verdict of a check that had nothing to compare: neither a pass nor a failure.
SKIPPED = "skipped"


@dataclass
class Divergence:
    key: Any
    values: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "values": {node: _json(value) for node, value in self.values.items()}}


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
    replicas_of: Callable[[Any], Sequence[str]] | None = None,
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


# ---------------------------------------------------------------- replica copies


@dataclass(frozen=True, slots=True)
class Held:
    """What one replica holds for a key, as replicas are compared: everything the protocol stored."""

    value: bytes | None  # None: a tombstone
    version: int
    expires_at_ms: int | None
    context: bytes
    # (value, version, context) of each sibling, sorted: the order a replica keeps them in means nothing.
    siblings: tuple[tuple[bytes | None, int, bytes], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "value": _shown(self.value),
            "tombstone": self.value is None,
            "version": self.version,
            "expires_at_ms": self.expires_at_ms,
            "context": _shown(self.context),
            "siblings": [{"value": _shown(v), "version": ver, "context": _shown(c)} for v, ver, c in self.siblings],
            **_leaderless_state(self.context),
        }


def replica_state(copy: Iterable[tuple[str, Record]], at_ms: int) -> dict[str, Held]:
    """One replica's copy of a partition as the checker compares it.

    Records expired at ``at_ms`` (values past their TTL, tombstones past their purge time) are left out:
    each replica purges them on its own timer, so one may still hold what another already dropped, and
    neither is served. Judging every copy at the same ``at_ms`` keeps that judgement the same for all.
    """
    return {
        key: Held(
            record.value,
            0 if record.context else record.version,
            record.expires_at_ms,
            record.context,
            tuple(sorted(((s.value, s.version, s.context) for s in record.siblings), key=_sibling_order)),
        )
        for key, record in copy
        if not record.expired(at_ms)
    }


def multi_copy_partitions(replicas: Sequence[Sequence[str]]) -> list[int]:
    """The partitions a partition map gives more than one replica, ascending."""
    return [p for p, nodes in enumerate(replicas) if len(nodes) > 1]


def check_copies(
    copies: Mapping[tuple[int, str], Iterable[tuple[str, Record]]],
    replicas: Sequence[Sequence[str]],
    at_ms: int,
) -> dict[str, Any]:
    """The convergence verdict (JSON) of ``copies[(partition, node)]``, every replica's copy of every
    partition in ``multi_copy_partitions(replicas)``, judged at ``at_ms`` (the latest clock of the nodes read).

    A partition of one replica has nothing to compare; when every partition has one, the verdict is
    ``SKIPPED``. A copy missing from ``copies`` counts as an empty one: every key it should hold diverges.
    """
    partitions = multi_copy_partitions(replicas)
    if not partitions:
        return {
            "valid": SKIPPED,
            "reason": "every partition has one replica: there are no copies to compare",
        }
    merged = ConvergenceResult(valid=True, keys=0)
    for partition in partitions:
        holders = tuple(replicas[partition])
        states = {node: replica_state(copies.get((partition, node), ()), at_ms) for node in holders}
        result = check(states, _every_key_on(holders))
        merged.keys += result.keys
        merged.diverged.extend(result.diverged)
    merged.valid = not merged.diverged
    return {**merged.to_json(), "partitions": len(partitions), "copies": sum(len(replicas[p]) for p in partitions),
            "at_ms": at_ms}


def _every_key_on(holders: Sequence[str]) -> Callable[[Any], Sequence[str]]:
    """``replicas_of`` for one partition: each of its keys belongs on every one of its replicas."""
    return lambda _key: holders


def _sibling_order(sibling: tuple[bytes | None, int, bytes]) -> tuple[int, bool, bytes, bytes]:
    value, version, context = sibling
    return version, value is None, value or b"", context


def _shown(data: bytes | None) -> str | None:
    """Bytes for a JSON report: the text when they are UTF-8, else ``base64:`` and their base64."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def _leaderless_state(context: bytes) -> dict[str, Any]:
    """``{"state": ...}``, a leaderless key state decoded for a report; empty for any other record's context."""
    if not context:
        return {}
    try:
        state = dvv.decode(context)
    except ValueError:
        return {}
    siblings = [{"dot": f"{node}:{counter}", "value": _shown(s.value), "timestamp_ms": s.timestamp_ms}
                for s in state.siblings for node, counter in (s.dot,)]
    return {"state": {"siblings": siblings, "seen": dict(state.context.entries)}}


def _json(value: Any) -> Any:
    return value.to_json() if isinstance(value, Held) else value
