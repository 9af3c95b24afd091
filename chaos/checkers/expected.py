"""What a scenario expects its checkers to find, and whether a run found it.

Most scenarios expect a valid history. Some exist to show an anomaly that a setting allows, and a run of
them passes when the checkers find that anomaly (a sweep counts such a seed as expected, not as a failure):

- ``valid``: every checker valid (one that had nothing to compare is left out).
- ``lost-writes``: the lost-writes checker or the siblings checker names at least one lost acknowledged
  write (``fsync = "never"`` under power loss, ``async`` replication under leader crashes, the ``lww`` policy
  under concurrent writers and clock skew). Losing writes also breaks linearizability, so that checker may
  fail too; the siblings checker must still find the replicas converged and the siblings bounded; every
  other checker must be valid.
- ``stale-reads``: the history is not linearizable (unsafe leader reads on a cut-off leader, with writes that
  lose nothing: the scenarios that expect it replicate ``sync``, which the valid sweeps hold linearizable).
  The linearizability checker is the one that finds every stale read; the lost-writes checker counts the
  ones it can name (a read that missed an acknowledged write seen again later), and counts as lost a missed
  write that was overwritten before anyone read it again, so that checker may fail too; every other
  checker must be valid.

- ``diverged``: after heal and quiet time the replicas' copies still differ (the convergence checker, or the
  siblings checker's ``converged``, finds a key whose replicas disagree): what a leaderless scenario shows with
  hinted handoff or anti-entropy switched off, in the quiet time that suffices with it on. Nothing else may go
  wrong: the siblings checker must find nothing lost and the siblings bounded, every other checker valid.

A run whose checkers leave the answer open (a verdict "unknown") is neither: the verdict is "unknown". An
expected anomaly needs its checkers in the scenario's list (``lost-writes``, and ``linearizable`` for stale
reads); without them it is never found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chaos.checkers import combine, convergence

VALID = "valid"
LOST_WRITES = "lost-writes"
STALE_READS = "stale-reads"
DIVERGED = "diverged"
EXPECTATIONS: tuple[str, ...] = (VALID, LOST_WRITES, STALE_READS, DIVERGED)
CONVERGENCE = "convergence"
SIBLINGS = "siblings"  # the siblings checker's name
# The checkers an expected anomaly is allowed to fail.
_MAY_FAIL: dict[str, frozenset[str]] = {
    VALID: frozenset(),
    LOST_WRITES: frozenset({"lost-writes", "linearizable"}),
    STALE_READS: frozenset({"lost-writes", "linearizable"}),
    DIVERGED: frozenset({CONVERGENCE}),
}


@dataclass(frozen=True)
class Outcome:
    """A run judged against its scenario's expectation."""

    expect: str
    # True: what the scenario expects; False: not; "unknown": a checker could not decide.
    met: bool | str
    # The anomalies found, by kind: "lost-writes" and "stale-reads" counts (0 when none).
    anomalies: dict[str, int]
    # Keys whose replicas were found to differ (the convergence or the siblings checker's count, the larger).
    diverged: int = 0

    def describe(self) -> str:
        """The anomalies found, e.g. "12 lost-writes, 3 stale-reads", "4 diverged keys", or "no anomaly"."""
        found = [f"{n} {kind}" for kind, n in self.anomalies.items() if n]
        if self.diverged:
            found.append(f"{self.diverged} diverged keys")
        return ", ".join(found) or "no anomaly"


def anomalies(checkers: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Lost acknowledged writes and stale reads counted by the lost-writes checker, lost writes by the siblings
    checker (0 if they did not run). A scenario runs the one that fits its workload; should it run both, they
    judge the same writes, so the lost count is the larger of theirs, not the sum."""
    lost = checkers.get("lost-writes", {})
    lost_siblings = int(checkers.get(SIBLINGS, {}).get("lost_count", 0))
    return {LOST_WRITES: max(int(lost.get("lost_count", 0)), lost_siblings),
            STALE_READS: int(lost.get("stale_read_count", 0))}


def _verdict(expect: str, name: str, result: Mapping[str, Any]) -> Any:
    """A checker's verdict as ``expect`` judges it. A run expected to lose writes may fail the siblings
    checker only by losing them: its replicas must still converge and its siblings stay bounded."""
    valid = result.get("valid")
    if name == SIBLINGS and expect == LOST_WRITES and isinstance(valid, bool):
        return result.get("converged") is True and result.get("bounded") is True
    if name == SIBLINGS and expect == DIVERGED and isinstance(valid, bool):
        return result.get("lost_count") == 0 and result.get("bounded") is True
    return valid


def judge(expect: str, checkers: Mapping[str, Mapping[str, Any]]) -> Outcome:
    """Whether ``checkers`` (each checker's JSON verdict) show what ``expect`` says."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"unknown expectation {expect!r} (known: {', '.join(EXPECTATIONS)})")
    found = anomalies(checkers)
    diverged = max(int(checkers.get(name, {}).get("diverged_count", 0)) for name in (CONVERGENCE, SIBLINGS))
    # A check that had nothing to compare neither passes nor fails a run.
    verdicts = {name: _verdict(expect, name, r) for name, r in checkers.items()
                if r.get("valid") != convergence.SKIPPED}
    others = combine([v for name, v in verdicts.items() if name not in _MAY_FAIL[expect]])
    if expect == VALID:
        return Outcome(expect, others, found, diverged)
    shown: bool | str
    if expect == LOST_WRITES:
        # Nothing found is only a verdict when every checker that counts lost writes could decide.
        undecided = any(checkers.get(name, {}).get("valid") == "unknown" for name in ("lost-writes", SIBLINGS))
        shown = found[LOST_WRITES] > 0 or ("unknown" if undecided else False)
    elif expect == STALE_READS:
        linearizable = verdicts.get("linearizable")
        shown = "unknown" if linearizable == "unknown" else linearizable is False
    else:
        shown = _diverged(checkers)
    return Outcome(expect, combine([others, shown]), found, diverged)


def _diverged(checkers: Mapping[str, Mapping[str, Any]]) -> bool | str:
    """Whether the replicas were found to differ: by the convergence checker (its copies) or the siblings checker
    (each replica's siblings); "unknown" when neither found it and one of them could not decide."""
    copies = checkers.get(CONVERGENCE, {}).get("valid")
    siblings = checkers.get(SIBLINGS, {})
    if copies is False or siblings.get("converged") is False:
        return True
    return "unknown" if "unknown" in (copies, siblings.get("valid")) else False
