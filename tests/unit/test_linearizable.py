"""Hand-written cases for the linearizability checker's semantics, and the public Knossos verdicts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from chaos.checkers import linearizable as lin
from chaos.history import HistoryError, from_dicts, load


def op(p: Any, f: str, value: Any, outcome: str = "ok", key: str = "x", error: str | None = None,
       result: Any = "same") -> list[dict[str, Any]]:
    """A complete op as two adjacent events (invoke, completion)."""
    done: dict[str, Any] = {"process": p, "type": outcome, "f": f, "key": key,
                            "value": value if result == "same" else result}
    if error:
        done["error"] = error
    return [{"process": p, "type": "invoke", "f": f, "key": key, "value": None if f == "read" else value}, done]


def invoke(p: Any, f: str, value: Any, key: str = "x") -> dict[str, Any]:
    return {"process": p, "type": "invoke", "f": f, "key": key, "value": None if f == "read" else value}


def done(p: Any, f: str, value: Any, outcome: str = "ok", key: str = "x", error: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"process": p, "type": outcome, "f": f, "key": key, "value": value}
    if error:
        row["error"] = error
    return row


def verdict(rows: list[dict[str, Any]]) -> object:
    return lin.check(from_dicts(rows)).valid


def test_sequential_register_is_linearizable() -> None:
    assert verdict(op(1, "write", 1) + op(1, "read", 1) + op(2, "cas", [1, 2]) + op(2, "read", 2)) is True


def test_stale_read_after_completed_write_is_not() -> None:
    assert verdict(op(1, "write", 1) + op(1, "write", 2) + op(2, "read", 1)) is False


def test_read_of_absent_key_is_null() -> None:
    assert verdict(op(1, "read", None)) is True
    assert verdict(op(1, "write", 1) + op(2, "read", None)) is False


def test_concurrent_ops_may_take_either_order() -> None:
    rows = [invoke(1, "write", 1), invoke(2, "read", None), done(2, "read", 0), done(1, "write", 1)]
    assert verdict(rows) is False  # nobody wrote 0
    rows = [invoke(1, "write", 1), invoke(2, "read", None), done(2, "read", 1), done(1, "write", 1)]
    assert verdict(rows) is True


def test_failed_write_did_not_happen() -> None:
    assert verdict(op(1, "write", 1, outcome="fail") + op(2, "read", 1)) is False
    assert verdict(op(1, "write", 1, outcome="fail") + op(2, "read", None)) is True


def test_info_write_may_or_may_not_happen_even_much_later() -> None:
    rows = op(1, "write", 1, outcome="info")
    assert verdict(rows + op(2, "read", None) + op(2, "read", 1)) is True
    # Once seen, it cannot be unseen: it took effect at one point.
    assert verdict(rows + op(2, "read", 1) + op(2, "read", None)) is False


def test_write_that_never_completed_is_open_to_the_end() -> None:
    assert verdict([invoke(1, "write", 7), *op(2, "read", None), *op(2, "read", 7)]) is True


def test_cas_precondition_failure_is_a_constraint() -> None:
    refused = op(2, "cas", [1, 5], outcome="fail", error="precondition_failed")
    # The register held 1 the whole time, so a cas expecting 1 cannot have been refused.
    assert verdict(op(1, "write", 1) + refused + op(1, "read", 1)) is False
    # A plain fail (no error code) only says it did not happen.
    assert verdict(op(1, "write", 1) + op(2, "cas", [1, 5], outcome="fail") + op(1, "read", 1)) is True
    # Refused while the value was something else: fine.
    assert verdict(op(1, "write", 2) + refused + op(1, "read", 2)) is True


def test_cas_succeeds_only_on_expected_value() -> None:
    assert verdict(op(1, "write", 1) + op(1, "cas", [2, 3])) is False
    assert verdict(op(1, "write", 1) + op(1, "cas", [1, 3]) + op(1, "read", 3)) is True


def test_append_builds_a_string() -> None:
    rows = op(1, "append", "a") + op(2, "append", "b") + op(1, "read", "ab")
    assert verdict(rows) is True
    assert verdict(op(1, "append", "a") + op(2, "append", "b") + op(1, "read", "ba")) is False


def test_delete_makes_the_key_absent() -> None:
    assert verdict(op(1, "write", 1) + op(1, "delete", None) + op(2, "read", None)) is True
    assert verdict(op(1, "write", 1) + op(1, "delete", None) + op(2, "read", 1)) is False


def test_keys_are_independent_and_failure_names_the_key() -> None:
    rows = op(1, "write", 1, key="a") + op(1, "write", 2, key="b") + op(2, "read", 1, key="b") + op(2, "read", 1,
                                                                                                      key="a")
    result = lin.check(from_dicts(rows))
    assert result.valid is False
    assert result.failure is not None and result.failure.key == "b"
    out = result.to_json()
    assert out["key"] == "b"
    shown = [entry["events"][1]["value"] for entry in out["failing_ops"]]
    assert shown == [2, 1]


def test_time_budget_gives_unknown_not_a_guess() -> None:
    # Many concurrent writes of distinct values and reads nobody can place: a hard search.
    rows: list[dict[str, Any]] = [invoke(p, "write", p) for p in range(40)]
    rows += [invoke(100 + p, "read", None) for p in range(20)]
    rows += [done(100 + p, "read", 1000 + p) for p in range(20)]
    rows += [done(p, "write", p) for p in range(40)]
    result = lin.check(from_dicts(rows), time_limit_s=0.05)
    assert result.valid == "unknown"
    assert result.unknown_keys == ["x"]
    assert result.unknown_reason == "time limit reached"
    assert result.failure is None
    # The same search under a memory budget instead: "unknown" too, saying why.
    result = lin.check(from_dicts(rows), time_limit_s=60, max_memo_bytes=200_000)
    assert result.valid == "unknown"
    assert result.unknown_reason is not None and "memo over" in result.unknown_reason
    assert result.to_json()["unknown_reason"] == result.unknown_reason


def test_unsupported_op_is_an_input_error() -> None:
    with pytest.raises(HistoryError, match="no op 'frobnicate'"):
        lin.check(from_dicts(op(1, "frobnicate", 1)))


def test_knossos_histories_get_their_known_verdicts(public_histories: Path) -> None:
    knossos = public_histories / "knossos"
    rows = list(csv.DictReader((knossos / "expected.tsv").open(), delimiter="\t"))
    assert len(rows) == 120
    wrong = []
    for row in rows:
        result = lin.check(load(knossos / row["file"]), time_limit_s=30)
        if result.valid is not (row["linearizable"] == "true"):
            wrong.append((row["file"], result.valid))
    assert wrong == []
