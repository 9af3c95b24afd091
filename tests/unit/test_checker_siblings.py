"""The siblings checker: lost acknowledged writes and supersession chains, convergence, the sibling bound, its
place among the checkers and expectations, and property tests against a simulated store of dvv states."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chaos.checkers import CHECKER_NAMES, expected, run_checkers, siblings
from chaos.checkers.siblings import FAILED, ITSELF_LOST, NEVER_OBSERVED, NEVER_WRITTEN, WRITE_FAILED, check
from chaos.history import Event, History, HistoryError, Op, from_dicts
from replication.conflict import LastWriterWins, Siblings
from replication.dvv import Dot, TooManySiblings, Versions, next_dot
from replication.vclock import VectorClock

Row = dict[str, Any]
KEY = "k"


class Rows:
    """A history under construction: each op its own process, invoked and completed at once."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def write(self, value: Any, saw: tuple[Any, ...] = (), outcome: str = "ok", key: str = KEY) -> Rows:
        body = {"value": value, "saw": list(saw)}
        return self._op("write", key, body, outcome, body)

    def read(self, values: list[Any] | None, outcome: str = "ok", key: str = KEY) -> Rows:
        return self._op("read", key, None, outcome, values if outcome == "ok" else None)

    def history(self) -> History:
        return from_dicts(self.rows)

    def _op(self, f: str, key: str, invoked: Any, outcome: str, completed: Any) -> Rows:
        process = len(self.rows)
        self.rows += [{"process": process, "type": "invoke", "f": f, "key": key, "value": invoked},
                      {"process": process, "type": outcome, "f": f, "key": key, "value": completed}]
        return self


def same(values: list[Any]) -> dict[str, dict[str, list[Any]]]:
    """A final state where both replicas of ``KEY`` hold ``values``."""
    return {KEY: {"n1": list(values), "n2": list(values)}}


def lost_values(result: siblings.SiblingsResult) -> list[Any]:
    return [w.value for w in result.lost]


# ---------------------------------------------------------------- hand-built histories


def test_siblings_kept_then_superseded_by_a_write_that_saw_them_is_valid() -> None:
    rows = Rows().write(1).write(2).read([1, 2]).write(3, saw=(1, 2)).read([3]).write(4)
    result = check(rows.history(), same([3, 4]), max_siblings=2)
    assert (result.valid, result.acknowledged, result.lost, result.converged, result.bounded) == (
        True, 4, [], True, True)
    assert result.max_siblings_seen == 2
    assert result.to_json() == {
        "valid": True, "acknowledged_writes": 4, "lost_count": 0, "lost": [], "converged": True,
        "diverged_count": 0, "diverged": [], "max_siblings_seen": 2, "max_siblings": 2, "bounded": True,
        "unexpected_count": 0, "unexpected": []}


def test_a_concurrent_write_dropped_last_writer_wins_style_is_lost_and_named() -> None:
    rows = Rows().write(1).write(2).read([2])
    result = check(rows.history(), same([2]))
    assert result.valid is False
    [lost] = result.lost
    assert (lost.key, lost.value, lost.claims) == (KEY, 1, ())
    assert result.to_json()["lost"] == [{
        "key": KEY, "value": 1, "claimed_by": [],
        "write": {"process": 0, "type": "invoke", "f": "write", "key": KEY, "value": {"saw": [], "value": 1}}}]
    assert result.to_json()["lost_count"] == 1


def test_a_chain_of_supersessions_that_ends_in_a_present_value_loses_nothing() -> None:
    rows = Rows().write(1).read([1]).write(2, saw=(1,)).read([2]).write(3, saw=(2,))
    assert check(rows.history(), same([3])).lost == []


def test_a_chain_that_ends_in_a_lost_write_loses_every_write_on_it() -> None:
    rows = Rows().write(1).read([1]).write(2, saw=(1,)).read([2]).write(3, saw=(2,)).write(9)
    result = check(rows.history(), same([9]))
    assert lost_values(result) == [1, 2, 3]
    claims = [[(c.write.invoke.to_json()["value"], c.why_not) for c in w.claims] for w in result.lost]
    assert claims == [[({"value": 2, "saw": [1]}, ITSELF_LOST)], [({"value": 3, "saw": [2]}, ITSELF_LOST)], []]


def test_a_supersession_claimed_by_a_failed_write_does_not_count() -> None:
    rows = Rows().write(1).read([1]).write(2, saw=(1,), outcome="fail")
    result = check(rows.history(), same([]))
    assert lost_values(result) == [1]
    assert [c.why_not for c in result.lost[0].claims] == [FAILED]
    # Even when the failed write's value shows up (reported as unexpected): a fail write never supersedes.
    result = check(rows.history(), same([2]))
    assert lost_values(result) == [1]
    assert [(u.value, u.why) for u in result.unexpected] == [(2, WRITE_FAILED)]
    assert result.to_json()["lost"][0]["claimed_by"][0]["why_not"] == FAILED


def test_an_info_write_supersedes_once_observed() -> None:
    # Observed by a read, then superseded in turn by an acknowledged write that is present.
    rows = Rows().write(1).read([1]).write(2, saw=(1,), outcome="info").read([2]).write(3, saw=(2,))
    assert check(rows.history(), same([3])).lost == []
    # Observed in the final state only.
    rows = Rows().write(1).read([1]).write(2, saw=(1,), outcome="info")
    assert check(rows.history(), same([2])).lost == []
    # Never observed: it may never have happened, so it supersedes nothing.
    result = check(rows.history(), same([]))
    assert lost_values(result) == [1]
    assert [c.why_not for c in result.lost[0].claims] == [NEVER_OBSERVED]
    assert result.acknowledged == 1


def test_unacknowledged_writes_are_never_lost() -> None:
    rows = Rows().write(1, outcome="info").write(2, outcome="fail")
    result = check(rows.history(), same([]))
    assert (result.valid, result.acknowledged, result.lost) == (True, 0, [])


def test_a_written_key_missing_from_the_final_state_holds_nothing() -> None:
    rows = Rows().write(1, key="a").write(2, key="b")
    result = check(rows.history(), {"a": {"n1": [1]}})
    assert [(w.key, w.value) for w in result.lost] == [("b", 2)]


def test_values_nobody_wrote_are_reported_as_unexpected() -> None:
    rows = Rows().write(1).read([1, 7])
    result = check(rows.history(), same([1, 8]))
    assert [(u.value, u.why) for u in result.unexpected] == [(7, NEVER_WRITTEN), (8, NEVER_WRITTEN)]
    assert result.valid is True  # reported, not judged: the verdict is loss, convergence and the bound


def test_replicas_that_differ_have_not_converged() -> None:
    rows = Rows().write(1).write(2)
    result = check(rows.history(), {KEY: {"n1": [1], "n2": [1, 2]}})
    assert (result.converged, result.valid, result.lost) == (False, False, [])
    assert result.to_json()["diverged"] == [{"key": KEY, "values": {"n1": [1], "n2": [1, 2]}}]
    # The order a replica lists its siblings in means nothing.
    assert check(rows.history(), {KEY: {"n1": [2, 1], "n2": [1, 2]}}).converged is True
    # A replica listed with no siblings differs from one that holds some.
    assert check(rows.history(), {KEY: {"n1": [], "n2": [1, 2]}}).converged is False


def test_more_siblings_than_the_bound_is_not_bounded() -> None:
    rows = Rows().write(1).write(2).write(3).read([1, 2, 3])
    result = check(rows.history(), same([1, 2, 3]), max_siblings=2)
    assert (result.max_siblings_seen, result.bounded, result.valid) == (3, False, False)
    assert check(rows.history(), same([1, 2, 3]), max_siblings=3).valid is True
    assert check(rows.history(), same([1, 2, 3])).bounded is True  # no bound given
    # The final state counts too.
    result = check(Rows().write(1).write(2).write(3).history(), same([1, 2, 3]), max_siblings=2)
    assert (result.max_siblings_seen, result.bounded) == (3, False)


def test_histories_recorded_in_memory_with_plain_dicts_and_lists_are_read_alike() -> None:
    events = [Event(0, 0, "invoke", "write", KEY, {"value": 1, "saw": []}),
              Event(1, 0, "ok", "write", KEY, {"value": 1, "saw": []}),
              Event(2, 1, "invoke", "read", KEY, None), Event(3, 1, "ok", "read", KEY, [1]),
              Event(4, 2, "invoke", "write", KEY, {"value": 2, "saw": [1]}),
              Event(5, 2, "ok", "write", KEY, {"value": 2, "saw": [1]})]
    assert check(History(events), same([2])).valid is True
    assert lost_values(check(History(events), same([]))) == [1, 2]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (Rows()._op("write", KEY, 5, "ok", 5), "must be {"),
        (Rows()._op("write", KEY, {"value": [1], "saw": []}, "ok", None), "string or a number"),
        (Rows().write(1, saw=([2],)), "a write's saw"),
        (Rows().write(1).write(1, outcome="fail"), "unique per key"),
        (Rows().read(None)._op("read", KEY, None, "ok", {"a": 1}), "a read's value"),
    ],
)
def test_a_history_of_another_shape_is_refused_naming_its_line(rows: Rows, message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        check(rows.history(), same([]))


def test_a_malformed_final_state_is_refused() -> None:
    with pytest.raises(ValueError, match="final state of key 'k' on 'n1'"):
        check(Rows().history(), {KEY: {"n1": 3}})  # type: ignore[dict-item]


# ---------------------------------------------------------------- registry and expectations


LWW_ROWS = Rows().write(1).write(2).read([2])


def test_the_siblings_checker_is_known_and_needs_the_final_state() -> None:
    assert "siblings" in CHECKER_NAMES
    history = LWW_ROWS.history()
    assert run_checkers(["siblings"], history)["siblings"]["valid"] == "unknown"
    result = run_checkers(["siblings"], history, final_siblings=same([2]), max_siblings=1)["siblings"]
    assert (result["valid"], result["lost_count"], result["max_siblings"]) == (False, 1, 1)


def test_an_lww_run_expected_to_lose_writes_meets_its_expectation() -> None:
    lost = run_checkers(["siblings"], LWW_ROWS.history(), final_siblings=same([2]))
    outcome = expected.judge("lost-writes", lost)
    assert (outcome.met, outcome.anomalies, outcome.describe()) == (True, {"lost-writes": 1, "stale-reads": 0},
                                                                    "1 lost-writes")
    assert expected.judge("valid", lost).met is False
    # Nothing lost: not the anomaly expected.
    fine = run_checkers(["siblings"], LWW_ROWS.history(), final_siblings=same([1, 2]))
    assert expected.judge("lost-writes", fine).met is False
    assert expected.judge("valid", fine).met is True
    # Losing writes does not excuse replicas that diverge or siblings past the bound.
    diverged = run_checkers(["siblings"], LWW_ROWS.history(), final_siblings={KEY: {"n1": [2], "n2": []}})
    assert expected.judge("lost-writes", diverged).met is False
    unbounded = run_checkers(["siblings"], Rows().write(1).write(2).read([1, 2]).write(3).history(),
                             final_siblings=same([2]), max_siblings=1)
    assert unbounded["siblings"]["lost_count"] == 2
    assert expected.judge("lost-writes", unbounded).met is False
    unknown = run_checkers(["siblings"], LWW_ROWS.history())
    assert expected.judge("lost-writes", unknown).met == "unknown"


# ---------------------------------------------------------------- property tests against a simulated store

NODES = ("n1", "n2", "n3")
KEYS = ("a", "b")
MAX_SIBLINGS = 3
# How far each node's clock is off: last-writer-wins then prefers the writes of fast clocks.
SKEW_MS = {"n1": 0, "n2": 40, "n3": -25}


class SimulatedStore(RuleBasedStateMachine):
    """Replicas of ``replication.dvv`` states under a conflict policy, written and read by clients that send
    back a context they read, with outcomes ok, info (stored or not) and fail (not stored), and replicas
    that merge pairwise. After every step the replicas as they are serve as the final state."""

    policy: Siblings | LastWriterWins = Siblings(MAX_SIBLINGS)

    def __init__(self) -> None:
        super().__init__()
        self.rows = Rows()
        self.states: dict[tuple[str, str], Versions] = {}
        self.counters = dict.fromkeys(NODES, 0)
        self.reads: dict[str, list[tuple[tuple[int, ...], VectorClock]]] = {key: [] for key in KEYS}
        # Each stored write's key, dot and the context its client sent: the model's own record of causality.
        self.dots: dict[int, tuple[str, Dot, VectorClock]] = {}
        self.acknowledged: set[int] = set()
        self.next_value = 1
        self.now_ms = 1000

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS), read=st.none() | st.integers(0, 50),
          outcome=st.sampled_from(["ok", "ok", "stored-info", "lost-info", "fail"]))
    def write(self, node: str, key: str, read: int | None, outcome: str) -> None:
        saw, seen = ((), VectorClock()) if read is None or not self.reads[key] else self.reads[key][
            read % len(self.reads[key])]
        value, self.next_value, self.now_ms = self.next_value, self.next_value + 1, self.now_ms + 10
        state = self.states.get((node, key))
        dot = next_dot(state, seen, node, self.counters[node])
        self.counters[node] = dot[1]
        try:
            written = self.policy.write(state, seen, dot, str(value).encode(), self.now_ms + SKEW_MS[node])
        except TooManySiblings:
            outcome = "fail"
        if outcome in ("ok", "stored-info"):
            self.states[(node, key)] = written
            self.dots[value] = (key, dot, seen)
        if outcome == "ok":
            self.acknowledged.add(value)
        self.rows.write(value, saw, "info" if outcome.endswith("info") else outcome, key)

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS), ok=st.booleans())
    def read(self, node: str, key: str, ok: bool) -> None:
        state = self.states.get((node, key))
        values = _values(state)
        if ok:
            self.reads[key].append((values, state.context if state else VectorClock()))
        self.rows.read(list(values), "ok" if ok else "info", key)

    @rule(src=st.sampled_from(NODES), dst=st.sampled_from(NODES), key=st.sampled_from(KEYS))
    def sync(self, src: str, dst: str, key: str) -> None:
        theirs, mine = self.states.get((src, key)), self.states.get((dst, key))
        if theirs is not None:
            self.states[(dst, key)] = theirs if mine is None else self.policy.merge(mine, theirs)

    def final(self, dropped: Container[int] = ()) -> dict[str, dict[str, list[int]]]:
        return {key: {node: [v for v in _values(self.states.get((node, key))) if v not in dropped] for node in NODES}
                for key in KEYS}

    def uncovered(self, final: dict[str, dict[str, list[int]]]) -> set[int]:
        """The acknowledged writes no present value of their key descends from, by the model's dots and
        contexts."""
        present = {v for by_node in final.values() for values in by_node.values() for v in values}
        return {v for v in self.acknowledged if not any(_descends(self.dots[p], self.dots[v]) for p in present)}

    def verdict(self, final: dict[str, dict[str, list[int]]]) -> siblings.SiblingsResult:
        result = check(self.rows.history(), final, max_siblings=MAX_SIBLINGS * len(NODES))
        converged = all(len({tuple(sorted(vs)) for vs in by_node.values()}) == 1 for by_node in final.values())
        assert result.converged is converged
        assert result.bounded is True
        assert result.acknowledged == len(self.acknowledged)
        assert result.unexpected == []
        return result


class SiblingsStore(SimulatedStore):
    @invariant()
    def nothing_acknowledged_is_lost(self) -> None:
        final = self.final()
        assert self.uncovered(final) == set()
        result = self.verdict(final)
        assert result.lost == []
        assert result.valid is result.converged

    @invariant()
    def dropping_a_present_acknowledged_value_loses_it_and_what_only_it_superseded(self) -> None:
        for key, by_node in self.final().items():
            for value in sorted({v for vs in by_node.values() for v in vs} & self.acknowledged):
                final = self.final(dropped={value})
                result = self.verdict(final)
                assert set(lost_values(result)) == self.uncovered(final), (key, value)
                # Replicas of the key that agree hold no value another one of theirs supersedes: the dropped one
                # is lost. (Before they merge, a replica may still hold a value another's newer write superseded.)
                assert value in lost_values(result) or len({tuple(sorted(vs)) for vs in by_node.values()}) > 1

    @invariant()
    def dropping_every_value_of_a_key_loses_every_acknowledged_write_of_it(self) -> None:
        for key, by_node in self.final().items():
            result = self.verdict(self.final(dropped={v for vs in by_node.values() for v in vs}))
            assert {w.value for w in result.lost if w.key == key} == {
                v for v in self.acknowledged if self.dots[v][0] == key}
            read = {v for values, _ in self.reads[key] for v in values}
            for lost in (w for w in result.lost if w.key == key):
                assert all(c.why_not == _why_not(c.write, read) for c in lost.claims)


class LastWriterWinsStore(SimulatedStore):
    policy = LastWriterWins()

    @invariant()
    def every_write_dropped_is_lost_and_only_those(self) -> None:
        final = self.final()
        result = self.verdict(final)
        present = {v for by_node in final.values() for values in by_node.values() for v in values}
        # Nothing present is lost, and every acknowledged write nothing present descends from is.
        assert self.uncovered(final) <= set(lost_values(result)) <= self.acknowledged - present
        assert all(len(values) <= 1 for by_node in final.values() for values in by_node.values())


def _descends(later: tuple[str, Dot, VectorClock], earlier: tuple[str, Dot, VectorClock]) -> bool:
    """Whether the write ``later`` is ``earlier`` or its client's context covered ``earlier``'s dot."""
    (key, dot, seen), (earlier_key, (node, counter), _) = later, earlier
    return key == earlier_key and (dot == (node, counter) or seen.get(node) >= counter)


def _why_not(claimant: Op, read: Container[int]) -> str:
    """Why a write's claim on a lost value does not count when nothing of the key is left: an effective
    claimant (acknowledged, or read by someone) is lost itself."""
    if claimant.type == "fail":
        return FAILED
    effective = claimant.type == "ok" or claimant.invoke.to_json()["value"]["value"] in read
    return ITSELF_LOST if effective else NEVER_OBSERVED


def _values(state: Versions | None) -> tuple[int, ...]:
    return () if state is None else tuple(int(v) for v in state.values)


_SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSiblingsStore = SiblingsStore.TestCase
TestSiblingsStore.settings = _SETTINGS
TestLastWriterWinsStore = LastWriterWinsStore.TestCase
TestLastWriterWinsStore.settings = _SETTINGS


def test_lww_under_concurrent_writers_and_clock_skew_reports_the_lost_write() -> None:
    policy = LastWriterWins()
    # n2's clock runs ahead: its write, taken earlier, wins over n1's later one.
    on_n2 = policy.write(None, VectorClock(), ("n2", 1), b"1", 2_000)
    on_n1 = policy.write(None, VectorClock(), ("n1", 1), b"2", 1_500)
    merged = policy.merge(on_n1, on_n2)
    assert merged.values == (b"1",)
    rows = Rows().write(1).write(2).read([1])
    result = check(rows.history(), same([int(v) for v in merged.values]))
    assert lost_values(result) == [2]
