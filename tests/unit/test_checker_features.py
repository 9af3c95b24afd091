"""The feature store's three checks (chaos/checkers/features.py) on hand-made histories and final states: each
passes what it must and names what went wrong, and the final rows are read from leader and leaderless records."""

from __future__ import annotations

from typing import Any

from chaos.checkers import CHECKER_NAMES, run_checkers
from chaos.checkers.features import (
    FeaturesFinal,
    FinalRows,
    check_acked,
    check_monotonic,
    check_recompute,
    replica_rows,
)
from chaos.history import History, from_dicts
from chaos.workloads import FeaturesWorkload
from kvstore.features.keys import encoded_event, event_key, event_row, online_key
from kvstore.storage.base import Record
from replication import dvv
from replication.event_time import Row, encode_row, merge_rows
from replication.vclock import VectorClock

VIEW = FeaturesWorkload().view
NODES = ("n1", "n2", "n3")


def values(trips: int | None, city: str = "oslo", rating: float = 4.5, active: bool = True) -> dict[str, Any]:
    return {"trips": trips, "rating": rating, "city": city, "active": active}


def event(entity: int, ts: int, vals: dict[str, Any]) -> dict[str, Any]:
    return {"entity": entity, "event_ts_ms": ts, "values": vals}


def ev_key(e: dict[str, Any]) -> str:
    return event_key(VIEW.name, str(e["entity"]), e["event_ts_ms"], encoded_event(e["event_ts_ms"], e["values"]))


def ev_row(e: dict[str, Any]) -> Row:
    return event_row(e["event_ts_ms"], e["values"])


def on_key(entity: int) -> str:
    return online_key(VIEW.name, str(entity))


class Ops:
    """A history under construction: each op invoked and completed at once, by the process given."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def push(self, events: list[dict[str, Any]], outcome: str = "ok", process: int = 0) -> Ops:
        self.rows.append({"process": process, "type": "invoke", "f": "push", "value": events})
        self.rows.append({"process": process, "type": outcome, "f": "push", "value": events})
        return self

    def read(self, entity: int, row: Row | None, process: int = 0, outcome: str = "ok") -> Ops:
        seen = None if row is None else {name: [ts, v] for name, (ts, v) in row.items()}
        self.rows.append({"process": process, "type": "invoke", "f": "read", "key": str(entity), "value": None})
        self.rows.append({"process": process, "type": outcome, "f": "read", "key": str(entity),
                          "value": seen if outcome == "ok" else None})
        return self

    def history(self) -> History:
        return from_dicts(self.rows)


def everywhere(row: Row | None) -> dict[str, Row | None]:
    return {node: row for node in NODES}


def stored(*events: dict[str, Any]) -> FinalRows:
    """The final rows of a store that applied ``events``: each in the log, each entity's online row merged."""
    rows: FinalRows = {}
    online: dict[int, Row] = {}
    for e in events:
        rows[ev_key(e)] = everywhere(ev_row(e))
        online[e["entity"]] = merge_rows(online.get(e["entity"], {}), ev_row(e))
    for entity, row in online.items():
        rows[on_key(entity)] = everywhere(row)
    return rows


E1 = event(1, 1_000, values(3))
E1_LATE = event(1, 400, values(9, "quito"))  # behind E1: the online row keeps E1's cells
E2 = event(2, 1_000, values(7))


# ---------------------------------------------------------------- 1. acknowledged events


def test_acknowledged_events_in_the_log_and_online_rows_pass() -> None:
    result = check_acked(Ops().push([E1, E1_LATE]).push([E2]).history(), FeaturesFinal(VIEW, stored(E1, E1_LATE, E2)))
    assert result["valid"] is True
    assert result["acknowledged_events"] == 3
    assert (result["lost_count"], result["online_behind_count"], result["unexpected_count"]) == (0, 0, 0)


def test_an_acknowledged_event_missing_from_one_replica_is_lost_there() -> None:
    rows = stored(E1, E2)
    rows[ev_key(E2)]["n2"] = None
    result = check_acked(Ops().push([E1]).push([E2]).history(), FeaturesFinal(VIEW, rows))
    assert result["valid"] is False
    assert result["lost"] == [{"push": 2, "entity": "2", "event_ts_ms": 1_000, "key": ev_key(E2),
                               "missing_on": ["n2"]}]


def test_an_acknowledged_event_on_no_replica_is_lost_everywhere() -> None:
    rows = stored(E1, E2)
    del rows[ev_key(E1)]
    result = check_acked(Ops().push([E1, E2]).history(), FeaturesFinal(VIEW, rows))
    assert result["lost_count"] == 1 and result["lost"][0]["missing_on"] == "every replica"


def test_an_online_row_older_than_an_acknowledged_event_is_behind() -> None:
    rows = stored(E1_LATE)
    rows[ev_key(E1)] = everywhere(ev_row(E1))  # the log has E1, one replica's online row kept the older event
    rows[on_key(1)] = {"n1": ev_row(E1), "n2": ev_row(E1), "n3": ev_row(E1_LATE)}
    result = check_acked(Ops().push([E1_LATE]).push([E1]).history(), FeaturesFinal(VIEW, rows))
    assert result["valid"] is False and result["lost_count"] == 0
    assert result["online_behind_count"] == 1
    behind = result["online_behind"][0]
    assert behind["behind_on"] == ["n3"] and behind["event"]["trips"] == [1_000, 3]
    assert behind["online"]["n3"]["trips"] == [400, 9]


def test_two_events_at_one_time_the_larger_packed_value_wins_each_cell() -> None:
    a = event(1, 1_000, values(5, "lisbon"))
    b = event(1, 1_000, values(6, "lisbon"))  # msgpack(6) > msgpack(5): b's trips wins; equal cells tie
    history = Ops().push([a]).push([b]).history()
    assert check_acked(history, FeaturesFinal(VIEW, stored(a, b)))["valid"] is True
    rows = stored(a, b)
    rows[on_key(1)] = everywhere(ev_row(a))  # a store that let the first arrival win the tie
    result = check_acked(history, FeaturesFinal(VIEW, rows))
    assert result["online_behind_count"] == 1 and result["online_behind"][0]["event"]["trips"] == [1_000, 6]


def test_unacknowledged_pushes_may_be_missing_and_failed_ones_found_are_reported_not_judged() -> None:
    gone = event(3, 2_000, values(1))
    landed = event(4, 2_000, values(2))
    history = Ops().push([E1]).push([gone], "info").push([landed], "fail").history()
    result = check_acked(history, FeaturesFinal(VIEW, stored(E1, landed)))
    assert result["valid"] is True and result["acknowledged_events"] == 1
    assert result["unexpected"] == [ev_key(landed)]


def test_a_failed_push_of_an_event_another_push_sent_is_not_unexpected() -> None:
    history = Ops().push([E1], "fail").push([E1], "info").history()
    assert check_acked(history, FeaturesFinal(VIEW, stored(E1)))["unexpected_count"] == 0


# ---------------------------------------------------------------- 2. monotonic sessions


def test_a_sessions_reads_moving_forward_in_event_time_pass() -> None:
    history = (Ops().read(1, None).read(1, ev_row(E1_LATE)).read(1, ev_row(E1)).read(1, ev_row(E1))
               .read(2, ev_row(E2)).history())
    result = check_monotonic(history)
    assert result == {"valid": True, "reads": 5, "sessions": 1, "violation_count": 0, "violations": []}


def test_a_read_behind_the_sessions_last_one_is_a_violation_per_feature() -> None:
    history = Ops().read(1, ev_row(E1)).read(1, ev_row(E1_LATE)).history()
    result = check_monotonic(history)
    assert result["valid"] is False and result["violation_count"] == 4  # every feature went back
    assert {"process": 0, "entity": "1", "feature": "trips", "earlier_read": 0, "earlier_ts": 1_000,
            "read": 2, "ts": 400} in result["violations"]


def test_a_read_that_finds_no_row_after_one_that_found_cells_is_a_violation() -> None:
    result = check_monotonic(Ops().read(1, ev_row(E1)).read(1, None).history())
    assert result["violation_count"] == 4 and result["violations"][0]["ts"] is None


def test_sessions_are_judged_apart_and_failed_reads_saw_nothing() -> None:
    history = (Ops().read(1, ev_row(E1), process=0).read(1, ev_row(E1_LATE), process=1)
               .read(1, None, process=0, outcome="fail").history())
    assert check_monotonic(history)["valid"] is True


# ---------------------------------------------------------------- 3. batch recompute


def test_online_rows_equal_to_the_merge_of_their_events_pass() -> None:
    result = check_recompute(FeaturesFinal(VIEW, stored(E1, E1_LATE, E2)))
    assert result == {"valid": True, "events": 3, "entities": 2, "online_differs_count": 0, "online_differs": [],
                      "event_log_diverged_count": 0, "event_log_diverged": []}


def test_an_online_row_that_kept_a_late_events_cells_differs_from_the_recompute() -> None:
    rows = stored(E1, E1_LATE)
    rows[on_key(1)] = {"n1": ev_row(E1), "n2": ev_row(E1_LATE), "n3": ev_row(E1)}
    result = check_recompute(FeaturesFinal(VIEW, rows))
    assert result["valid"] is False
    assert result["online_differs"] == [{
        "entity": "1", "recomputed": {n: [1_000, v] for n, v in E1["values"].items()}, "differ_on": ["n2"],
        "online": {"n2": {n: [400, v] for n, v in E1_LATE["values"].items()}},
    }]


def test_events_without_an_online_row_and_an_online_row_without_events_differ() -> None:
    rows = stored(E1, E2)
    del rows[on_key(2)]
    rows[on_key(5)] = everywhere(ev_row(event(5, 10, values(1))))
    result = check_recompute(FeaturesFinal(VIEW, rows))
    assert [(d["entity"], d["differ_on"]) for d in result["online_differs"]] == [
        ("2", "every replica (no online row)"), ("5", ["n1", "n2", "n3"])]


def test_replicas_whose_event_logs_differ_are_reported() -> None:
    rows = stored(E1, E1_LATE)
    rows[ev_key(E1_LATE)]["n3"] = None  # n3's online row still holds the merge: its log lost an event
    result = check_recompute(FeaturesFinal(VIEW, rows))
    assert result["valid"] is False and result["online_differs_count"] == 0
    assert [d["key"] for d in result["event_log_diverged"]] == [ev_key(E1_LATE)]


# ---------------------------------------------------------------- final rows and wiring


def test_final_rows_come_from_leader_values_and_leaderless_states() -> None:
    row = ev_row(E1)
    state = dvv.Versions((dvv.Sibling(("n2", 4), encode_row(row), 123),), VectorClock.of({"n2": 4}))
    copies = {
        (0, "n1"): [(on_key(1), Record(encode_row(row), 7)), ("register/x", Record(b"1", 8))],
        (0, "n2"): [(on_key(1), Record(encode_row(row), 0, context=dvv.encode(state)))],
        (1, "n3"): [(ev_key(E1), Record(encode_row(row), 2))],
    }
    rows = replica_rows(copies, [("n1", "n2"), ("n3", "n1")])
    assert rows == {on_key(1): {"n1": row, "n2": row}, ev_key(E1): {"n3": row, "n1": None}}


def test_the_checks_are_named_checkers_and_the_final_state_checks_need_one() -> None:
    names = ["features-acked", "features-monotonic", "features-recompute"]
    assert set(names) <= set(CHECKER_NAMES)
    history = Ops().push([E1]).read(1, ev_row(E1)).history()
    unknown = run_checkers(names, history)
    assert {n: r["valid"] for n, r in unknown.items()} == {
        "features-acked": "unknown", "features-monotonic": True, "features-recompute": "unknown"}
    judged = run_checkers(names, history, features_final=FeaturesFinal(VIEW, stored(E1)))
    assert all(r["valid"] is True for r in judged.values())
