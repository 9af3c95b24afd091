"""The lost-write judgement of `kvstore sim` runs, on histories shaped as the simulator runner records them.

A run ends with one final read of every key after every fault has healed; the lost-writes checker
(chaos/checkers/lost_writes.py) and the linearizability checker judge the whole history.
"""

from __future__ import annotations

from typing import Any

from chaos.checkers import run_checkers
from chaos.history import History, from_dicts

Row = dict[str, Any]


def op(process: int, f: str, value: Any, outcome: str, seen: Any = None, key: str = "r0") -> list[Row]:
    shown = seen if f == "read" else value
    completion: Row = {"process": process, "type": outcome, "f": f, "key": key, "value": shown}
    if outcome != "ok":
        completion["error"] = "timeout" if outcome == "info" else "unavailable"
    return [{"process": process, "type": "invoke", "f": f, "key": key, "value": None if f == "read" else value},
            completion]


def final_read(seen: Any, key: str = "r0") -> list[Row]:
    return op(99, "read", None, "ok", seen, key)


def verdicts(rows: list[Row]) -> dict[str, Any]:
    history: History = from_dicts(rows)
    return run_checkers(("linearizable", "lost-writes"), history, time_limit_s=5)


def test_the_latest_acknowledged_write_passes() -> None:
    result = verdicts(op(0, "write", 1, "ok") + op(0, "write", 2, "ok") + final_read(2))
    assert result["linearizable"]["valid"] is True
    lost = result["lost-writes"]
    assert (lost["valid"], lost["acknowledged_writes"], lost["lost_count"]) == (True, 2, 0)


def test_an_older_value_at_the_end_means_a_lost_write() -> None:
    result = verdicts(op(0, "write", 1, "ok") + op(0, "write", 2, "ok") + final_read(1))
    assert result["linearizable"]["valid"] is False
    lost = result["lost-writes"]
    assert lost["valid"] is False and lost["lost_count"] == 1
    assert lost["lost"][0]["write"]["value"] == 2 and lost["lost"][0]["seen_instead"] == 1


def test_a_vanished_key_loses_its_acknowledged_writes() -> None:
    result = verdicts(op(0, "write", 1, "ok") + final_read(None))
    assert result["lost-writes"]["lost_count"] == 1
    assert result["linearizable"]["valid"] is False


def test_a_write_of_unknown_outcome_may_have_happened_or_not() -> None:
    timed_out = op(0, "write", 1, "ok") + op(1, "write", 2, "info")
    assert verdicts(timed_out + final_read(2))["lost-writes"]["valid"] is True
    assert verdicts(timed_out + final_read(1))["lost-writes"]["valid"] is True
    assert verdicts(timed_out + final_read(1))["linearizable"]["valid"] is True


def test_a_definitely_failed_write_must_not_show() -> None:
    result = verdicts(op(0, "write", 1, "ok") + op(1, "write", 2, "fail") + final_read(2))
    assert result["linearizable"]["valid"] is False


def test_cas_writes_count_with_their_new_value() -> None:
    rows = op(0, "write", 1, "ok") + op(0, "cas", [1, 3], "ok")
    assert verdicts(rows + final_read(3))["lost-writes"]["valid"] is True
    lost = verdicts(rows + final_read(1))["lost-writes"]
    assert lost["lost_count"] == 1 and lost["lost"][0]["write"]["f"] == "cas"


def test_keys_are_judged_apart() -> None:
    rows = op(0, "write", 1, "ok", key="r0") + op(1, "write", 2, "ok", key="r1")
    result = verdicts(rows + final_read(1, "r0") + final_read(None, "r1"))
    assert [w["key"] for w in result["lost-writes"]["lost"]] == ["r1"]
