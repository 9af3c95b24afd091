"""Lost acknowledged writes, convergence and the sibling bound of a leaderless (sibling-keeping) history.

History shape, per key (values are JSON scalars, strings or numbers, unique per key across the run):

- a write: ``f = "write"``, ``key``, ``value = {"value": v, "saw": [v1, v2, ...]}`` on its invoke and its
  completion. ``saw`` lists the sibling values of the read whose causal context the write sent back (``[]``:
  a blind write, no context). Completion ``ok`` (acknowledged), ``fail`` (definitely did not happen) or
  ``info`` (unknown; a write that never completes is ``info`` too).
- a read: ``f = "read"``, completion ``ok`` with ``value = [v1, v2, ...]``, every sibling value the read
  returned (``[]`` or ``null``: the key is absent). Reads that did not complete ``ok`` observed nothing.
- other ops (``f`` neither ``write`` nor ``read``) are not this checker's business and are ignored.

The final state is given apart from the history: ``{key: {node: [values]}}``, the sibling values each replica
of each key holds after heal and quiet time. Every written key must be in it: a key missing there holds nothing.

A write ``w2`` *supersedes* ``w`` when ``w``'s value is in ``w2.saw``: the store was told to replace exactly
what that read returned. ``w2`` can only do so if it took effect: it is *effective* when acknowledged, or when
its outcome is unknown (``info``) but its value was observed (in a read or in the final state), which proves
it was stored. A ``fail`` write never supersedes, whatever it claimed.

A write is *accounted for* when its value is in some replica's final siblings, or an effective write that is
itself accounted for supersedes it: every supersession chain must end in a value that is present. An
acknowledged write that is not accounted for is **lost**, reported with every write that claimed to supersede
it and why that claim does not count (``failed``, ``never observed``, ``itself lost``).

Why the chain must end in a present value: supersession is a claim about the *final* state, that it causally
descends from ``w`` (in dotted-version-vector terms, that its context covers ``w``'s dot because a value it
holds was written by a client that had, directly or through earlier writes, read ``w``). The only witnesses
the checker has of the final state are the values it holds, so a chain from ``w`` that stops at a write that
is neither present nor superseded shows nothing about the final state: the store dropped the whole chain.
Crediting the dropped successor instead would let a store that acknowledges read-modify-writes and then
discards them be charged one loss per chain however many acknowledged writes vanished with it; the report
lists the claim, so a reader sees that ``w`` went down with its successor. For an honest sibling-keeping
store, chains of values and coverage by dots agree: a value leaves a replica only for a stored write whose
context covered it, and that write stays present or is in turn read (so observed) and superseded, so every
chain ends in a present value (the property tests check the two against a simulated ``replication.dvv`` store).

``converged`` asks the convergence checker whether every replica listed for a key holds the same siblings
(compared as sorted lists: the order a replica keeps them in means nothing). ``max_siblings_seen`` is the
largest sibling list of any ``ok`` read or final replica; ``bounded`` holds when it does not exceed
``max_siblings`` (always, when no bound is given). ``valid`` is: nothing lost, converged and bounded.

``unexpected`` lists observed values that no write made or whose write failed. They are reported but left out
of the verdict, which is about losing acknowledged writes: a failed write that shows up means an error was
called definite that should have been indefinite, a finding for the report rather than a loss.

A history that does not have this shape (a write value without ``value``/``saw``, a value written twice on
one key, a read value that is not a list) is refused with ``HistoryError`` naming its line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.checkers import convergence
from chaos.history import History, HistoryError, JsonObject, Op

# The values a checker can name a write by: JSON scalars (hashable, and equal in a history and the final state).
Value = str | int | float
FinalSiblings = Mapping[Any, Mapping[str, Sequence[Any]]]

FAILED = "failed"
NEVER_OBSERVED = "never observed"
ITSELF_LOST = "itself lost"
NEVER_WRITTEN = "never written"
WRITE_FAILED = "its write failed"
# How many entries of each list a JSON report shows (the counts are always complete).
_SHOWN = 50


@dataclass(frozen=True)
class Claim:
    """A write that named a lost write's value in its ``saw`` and why that does not account for it."""

    write: Op
    why_not: str  # FAILED, NEVER_OBSERVED or ITSELF_LOST

    def to_json(self) -> dict[str, Any]:
        return {"write": self.write.invoke.to_json(), "outcome": self.write.type, "why_not": self.why_not}


@dataclass(frozen=True)
class LostSiblingWrite:
    key: Any
    value: Value
    write: Op
    claims: tuple[Claim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "write": self.write.invoke.to_json(),
                "claimed_by": [c.to_json() for c in self.claims]}


@dataclass(frozen=True)
class UnexpectedValue:
    key: Any
    value: Value
    why: str  # NEVER_WRITTEN or WRITE_FAILED

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "why": self.why}


@dataclass
class SiblingsResult:
    valid: bool
    acknowledged: int
    lost: list[LostSiblingWrite] = field(default_factory=list)
    converged: bool = True
    diverged: list[convergence.Divergence] = field(default_factory=list)
    max_siblings_seen: int = 0
    max_siblings: int | None = None
    bounded: bool = True
    unexpected: list[UnexpectedValue] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "acknowledged_writes": self.acknowledged,
            "lost_count": len(self.lost),
            "lost": [w.to_json() for w in self.lost[:_SHOWN]],
            "converged": self.converged,
            "diverged_count": len(self.diverged),
            "diverged": [d.to_json() for d in self.diverged[:_SHOWN]],
            "max_siblings_seen": self.max_siblings_seen,
            "max_siblings": self.max_siblings,
            "bounded": self.bounded,
            "unexpected_count": len(self.unexpected),
            "unexpected": [u.to_json() for u in self.unexpected[:_SHOWN]],
        }


@dataclass(frozen=True)
class _Write:
    op: Op
    value: Value
    saw: tuple[Value, ...]


@dataclass
class _Key:
    """One key's writes by value, and the values its ``ok`` reads returned."""

    writes: dict[Value, _Write] = field(default_factory=dict)
    read_values: set[Value] = field(default_factory=set)


def check(history: History, final: FinalSiblings, max_siblings: int | None = None) -> SiblingsResult:
    keys, max_read = _read_history(history)
    present = {key: _final_values(key, by_node) for key, by_node in final.items()}
    result = SiblingsResult(valid=True, acknowledged=0, max_siblings=max_siblings)
    for key in sorted(keys.keys() | present.keys(), key=repr):
        _check_key(key, keys.get(key, _Key()), present.get(key, set()), result)
    conv = convergence.check(_by_node(final), _listed_nodes(final))
    result.converged, result.diverged = conv.valid, conv.diverged
    result.max_siblings_seen = max([max_read, *(len(vs) for by_node in final.values() for vs in by_node.values())])
    result.bounded = max_siblings is None or result.max_siblings_seen <= max_siblings
    result.valid = not result.lost and result.converged and result.bounded
    return result


def _check_key(key: Any, k: _Key, present: set[Value], result: SiblingsResult) -> None:
    observed = k.read_values | present

    def effective(w: _Write) -> bool:
        return w.op.type == "ok" or (w.op.type == "info" and w.value in observed)

    # Accounted for: present, or named in the saw of an effective write that is accounted for (a walk back
    # from the present values along the saw lists of effective writes).
    accounted = set(present)
    pending = list(present)
    while pending:
        producer = k.writes.get(pending.pop())
        if producer is None or not effective(producer):
            continue
        for earlier in producer.saw:
            if earlier not in accounted:
                accounted.add(earlier)
                pending.append(earlier)

    claimants: dict[Value, list[_Write]] = defaultdict(list)
    for w in k.writes.values():
        for earlier in w.saw:
            claimants[earlier].append(w)
    for w in sorted(k.writes.values(), key=lambda w: w.op.invoke.index):
        if w.op.type != "ok":
            continue
        result.acknowledged += 1
        if w.value not in accounted:
            claims = tuple(Claim(c.op, _why_not(c, effective(c))) for c in claimants[w.value])
            result.lost.append(LostSiblingWrite(key, w.value, w.op, claims))
    for value in sorted(observed, key=repr):
        made_by = k.writes.get(value)
        if made_by is None:
            result.unexpected.append(UnexpectedValue(key, value, NEVER_WRITTEN))
        elif made_by.op.type == "fail":
            result.unexpected.append(UnexpectedValue(key, value, WRITE_FAILED))


def _why_not(claimant: _Write, effective: bool) -> str:
    if claimant.op.type == "fail":
        return FAILED
    # An effective claimant of an unaccounted value is unaccounted itself: had it been, so would the value.
    return ITSELF_LOST if effective else NEVER_OBSERVED


# ---------------------------------------------------------------- reading the inputs


def _read_history(history: History) -> tuple[dict[Any, _Key], int]:
    """Each key's writes and read values, and the largest sibling list a read returned."""
    keys: dict[Any, _Key] = defaultdict(_Key)
    max_read = 0
    for op in history.ops():
        if op.f == "write":
            write = _write_of(op, history.source)
            k = keys[op.key]
            if write.value in k.writes:
                raise HistoryError(history.source, op.invoke.line,
                                   f"value {write.value!r} was written to key {op.key!r} before: values must be "
                                   f"unique per key")
            k.writes[write.value] = write
        elif op.f == "read" and op.type == "ok":
            assert op.complete is not None  # an ok op has its completion
            siblings = _values(op.complete.value, history.source, op.complete.line, "a read's value")
            keys[op.key].read_values.update(siblings)
            max_read = max(max_read, len(siblings))
    return dict(keys), max_read


def _write_of(op: Op, source: str) -> _Write:
    raw = op.invoke.value
    fields = dict(raw.items) if isinstance(raw, JsonObject) else raw
    if not isinstance(fields, Mapping) or "value" not in fields or "saw" not in fields:
        raise HistoryError(source, op.invoke.line, 'a write\'s value must be {"value": v, "saw": [...]}')
    value = fields["value"]
    if not _is_value(value):
        raise HistoryError(source, op.invoke.line, f"a written value must be a string or a number, got {value!r}")
    return _Write(op, value, tuple(_values(fields["saw"], source, op.invoke.line, "a write's saw")))


def _values(raw: Any, source: str, line: int, what: str) -> list[Value]:
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)) or not all(_is_value(v) for v in raw):
        raise HistoryError(source, line, f"{what} must be a list of strings or numbers, got {raw!r}")
    return list(raw)


def _is_value(raw: Any) -> bool:
    return isinstance(raw, (str, int, float))


def _final_values(key: Any, by_node: Mapping[str, Sequence[Any]]) -> set[Value]:
    present: set[Value] = set()
    for node, values in by_node.items():
        if not isinstance(values, (list, tuple)) or not all(_is_value(v) for v in values):
            raise ValueError(f"final state of key {key!r} on {node!r}: expected a list of strings or numbers")
        present.update(values)
    return present


def _by_node(final: FinalSiblings) -> dict[str, dict[Any, list[Value]]]:
    """The final state as the convergence checker reads it: per node, each key's siblings in one order."""
    states: dict[str, dict[Any, list[Value]]] = defaultdict(dict)
    for key, by_node in final.items():
        for node, values in by_node.items():
            states[node][key] = sorted(values, key=repr)
    return dict(states)


def _listed_nodes(final: FinalSiblings) -> Callable[[Any], Sequence[str]]:
    """``replicas_of`` for the convergence checker: the replicas the final state lists for each key."""
    return lambda key: sorted(final.get(key, {}))
