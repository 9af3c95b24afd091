"""Expected anomalies: stale reads counted by the lost-writes checker, and runs judged against ``expect``."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checkers import expected, run_checkers
from chaos.checkers.lost_writes import check
from chaos.history import from_dicts
from chaos.scenario import ScenarioError, from_dict

Row = dict[str, Any]


def op(process: int, f: str, value: Any, outcome: str = "ok", seen: Any = None) -> list[Row]:
    shown = seen if f == "read" else value
    return [{"process": process, "type": "invoke", "f": f, "key": "r", "value": None if f == "read" else value},
            {"process": process, "type": outcome, "f": f, "key": "r", "value": shown}]


# Write 1, write 2 (acknowledged), then a cut-off leader's read still shows 1, then a read shows 2 again.
STALE = op(0, "write", 1) + op(0, "write", 2) + op(1, "read", None, seen=1) + op(2, "read", None, seen=2)
# The same, but nobody ever sees 2 again: 2 was lost.
LOST = op(0, "write", 1) + op(0, "write", 2) + op(1, "read", None, seen=1)


def test_a_read_that_missed_a_write_seen_again_later_is_stale_not_lost() -> None:
    result = check(from_dicts(STALE))
    assert (result.valid, len(result.lost), len(result.stale)) == (True, 0, 1)
    stale = result.to_json()["stale_reads"][0]
    assert (stale["seen"], stale["missed"]["value"]) == (1, 2)
    assert result.to_json()["stale_read_count"] == 1
    lost = check(from_dicts(LOST))
    assert (lost.valid, len(lost.lost), len(lost.stale)) == (False, 1, 0)


def test_each_stale_read_counts_once() -> None:
    rows = op(0, "write", 1) + op(0, "write", 2) + op(0, "write", 3) + op(1, "read", None, seen=1)
    rows += op(2, "read", None, seen=1) + op(3, "read", None, seen=2) + op(3, "read", None, seen=3)
    assert len(check(from_dicts(rows)).stale) == 3  # two reads of 1 (missed 2 and 3), one of 2 (missed 3)


def judge(expect: str, rows: list[Row], extra: dict[str, dict[str, Any]] | None = None) -> expected.Outcome:
    checkers = run_checkers(("linearizable", "lost-writes"), from_dicts(rows), time_limit_s=5)
    return expected.judge(expect, {**checkers, **(extra or {})})


def test_valid_expects_every_checker_valid() -> None:
    fine = op(0, "write", 1) + op(1, "read", None, seen=1)
    assert judge("valid", fine).met is True
    assert judge("valid", STALE).met is False
    assert judge("valid", fine, {"convergence": {"valid": "skipped"}}).met is True
    assert judge("valid", fine, {"convergence": {"valid": "unknown"}}).met == "unknown"


def test_lost_writes_expected_is_met_only_when_a_write_is_lost() -> None:
    outcome = judge("lost-writes", LOST)
    assert (outcome.met, outcome.anomalies) == (True, {"lost-writes": 1, "stale-reads": 0})
    assert outcome.describe() == "1 lost-writes"
    assert judge("lost-writes", STALE).met is False  # stale, not lost: not the anomaly expected
    # The anomaly must not come with a divergence between copies.
    assert judge("lost-writes", LOST, {"convergence": {"valid": False}}).met is False


def test_stale_reads_expected_needs_a_non_linearizable_history() -> None:
    outcome = judge("stale-reads", STALE)
    assert (outcome.met, outcome.anomalies) == (True, {"lost-writes": 0, "stale-reads": 1})
    assert judge("stale-reads", op(0, "write", 1) + op(1, "read", None, seen=1)).met is False
    # The linearizability checker decides: a stale read the lost-writes checker counts as a lost write (the
    # missed write overwritten before anyone read it again) is still one.
    assert judge("stale-reads", LOST).met is True
    assert expected.judge("stale-reads", {"linearizable": {"valid": "unknown"},
                                          "lost-writes": {"valid": True, "stale_read_count": 2}}).met == "unknown"


def test_diverged_expected_needs_replicas_that_differ_and_nothing_else_wrong() -> None:
    apart = {"convergence": {"valid": False, "diverged_count": 3},
             "siblings": {"valid": False, "lost_count": 0, "converged": False, "diverged_count": 2, "bounded": True}}
    outcome = expected.judge("diverged", apart)
    assert (outcome.met, outcome.diverged, outcome.describe()) == (True, 3, "3 diverged keys")
    assert expected.judge("valid", apart).met is False
    together = {"convergence": {"valid": True}, "siblings": {"valid": True, "lost_count": 0, "converged": True,
                                                              "bounded": True}}
    assert expected.judge("diverged", together).met is False
    # Diverging is the finding; losing an acknowledged write or passing the bound is not.
    lost = {**apart, "siblings": {**apart["siblings"], "lost_count": 1}}
    assert expected.judge("diverged", lost).met is False
    unbounded = {**apart, "siblings": {**apart["siblings"], "bounded": False}}
    assert expected.judge("diverged", unbounded).met is False
    assert expected.judge("diverged", {"convergence": {"valid": "unknown"}}).met == "unknown"


def test_a_scenario_names_its_expectation_under_checkers() -> None:
    assert from_dict({}, "x.toml").checkers.expect == "valid"
    assert from_dict({"checkers": {"expect": "stale-reads"}}, "x.toml").checkers.expect == "stale-reads"
    with pytest.raises(ScenarioError, match=r"bad\.toml \[checkers\]: expect must be one of valid, lost-writes, "
                                            r"stale-reads, diverged, not 'chaos'"):
        from_dict({"checkers": {"expect": "chaos"}}, "bad.toml")
    with pytest.raises(ValueError, match="unknown expectation"):
        expected.judge("chaos", {})
