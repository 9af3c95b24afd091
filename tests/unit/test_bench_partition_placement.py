"""bench/partition_placement.py, --quick: every figure is there and the acceptance values hold (no timing targets)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from types import ModuleType
from typing import Any

import pytest
from bench_loader import load_bench

LOOKUPS = {
    "ring_owner_cold",
    "ring_owner_warm",
    "ring_preference_1_cold",
    "ring_preference_1_warm",
    "ring_preference_3_cold",
    "ring_preference_3_warm",
    "range_map_cold",
    "hash_placement_cold",
    "hash_placement_warm",
    "key_hash_cold",
    "key_hash_warm",
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("partition_placement")


@pytest.fixture(scope="module")
def quick(bench: ModuleType) -> tuple[int, list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--quick"])
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def report(quick: tuple[int, list[str]]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(quick[1][-1])
    return parsed


def test_quick_run_passes_and_prints_the_report_then_the_json_line(
    quick: tuple[int, list[str]], report: dict[str, Any]
) -> None:
    code, lines = quick
    assert code == 0
    text = "\n".join(lines[:-1])
    for heading in ("1. Lookups at 10,000 partitions", "2. Spread on the ring", "3. Movement on a join"):
        assert heading in text
    assert "rebalance.balance, 5 -> 6 nodes" in text
    assert lines[-3] == "acceptance checks: all met"
    assert report["bench"] == "partition_placement" and report["quick"] is True and report["runs"] == 1


def test_lookups_report_every_subject_beside_the_dict(report: dict[str, Any]) -> None:
    lk = report["lookups"]
    assert lk["partitions"] == 10_000 and lk["ring_tokens"] == 10_000 and lk["ranges"] == 10_000
    assert lk["ring_nodes"] * lk["ring_vnodes"] == lk["ring_tokens"]
    rows = {r["name"]: r for r in lk["rows"]}
    assert set(rows) == LOOKUPS
    for name, r in rows.items():
        for figure in ("ns_per_lookup", "lookups_per_s", "dict_ns_per_lookup", "dict_lookups_per_s", "ratio"):
            assert r[figure] > 0, (name, figure)
        assert r["ns_min"] <= r["ns_per_lookup"] <= r["ns_max"]
        assert len(r["ratio_runs"]) == report["runs"]
        # One run: the ratio is that run's reference time over the subject's (4 significant digits each).
        assert r["ratio"] == pytest.approx(r["dict_ns_per_lookup"] / r["ns_per_lookup"], rel=2e-3)
        # Cold rows miss key_hash's memo on every key; warm rows fit in it.
        if r["keys"] == "cold":
            assert r["key_count"] == report["keys"] >= 2 * lk["memo_entries"]
        else:
            assert r["keys"] == "warm" and r["key_count"] <= lk["memo_entries"]


def test_spread_meets_the_acceptance_bound(report: dict[str, Any]) -> None:
    sp = report["spread"]
    assert [r["vnodes"] for r in sp["rows"]] == [1, 16, 64, 256]
    assert sp["nodes"] == 5 and sp["keys"] == report["keys"]
    for r in sp["rows"]:
        assert r["keys_smallest_over_mean"] <= 1 <= r["keys_largest_over_mean"]
        assert set(r["partitions_largest_over_mean"]) == {"64", "1024"}
    at16 = next(r for r in sp["rows"] if r["vnodes"] == 16)
    assert at16["keys_largest_over_mean"] <= 1.25
    assert at16["ring_largest_over_mean"] <= 1.05  # the ring's own arithmetic, exact: 1.026
    assert sp["rows"][0]["ring_largest_over_mean"] == pytest.approx(1.25)  # one token each: no old token moves


def test_a_join_moves_only_to_the_new_node_about_its_share(report: dict[str, Any]) -> None:
    mv = report["movement"]
    assert [r["old_nodes"] for r in mv["rows"]] == [3, 5, 9]
    for r in mv["rows"]:
        assert r["keys_moved_between_old_nodes"] == 0 and r["partitions_moved_between_old_nodes"] == 0
        assert 0.9 <= r["keys_moved_over_ideal"] <= 1.1
        assert r["new_node_ring_share"] == pytest.approx(r["ideal_fraction"], rel=1e-3)
    rows = mv["rebalance"]["rows"]
    tolerant, exact, from_ring = rows
    assert (tolerant["moved"], tolerant["moved_to_new_node"], tolerant["least_within_tolerance"]) == (29, 29, 29)
    assert (exact["moved"], exact["moved_to_new_node"], exact["loads"]) == (32, 32, [32] * 6)
    assert from_ring["moved"] == from_ring["moved_to_new_node"] >= from_ring["least_within_tolerance"]
    for r in rows:
        assert r["replicas"] == 192 and sum(r["loads"]) == 192
    ring_join = mv["rebalance"]["ring_join"]
    assert ring_join["moved"] == ring_join["moved_to_new_node"]


def test_checks_pass_and_fail_on_the_acceptance_values(bench: ModuleType, report: dict[str, Any]) -> None:
    checks = report["checks"]
    assert checks["ok"] is True and checks["spread_ok"] is True and checks["movement_ok"] is True
    assert checks["keys_moved_between_old_nodes"] == 0 and checks["spread_limit"] == 1.25

    spread, movement = copy.deepcopy(report["spread"]), copy.deepcopy(report["movement"])
    next(r for r in spread["rows"] if r["vnodes"] == 16)["keys_largest_over_mean"] = 1.26
    failed = bench.evaluate_checks(spread, movement)
    assert failed["spread_ok"] is False and failed["movement_ok"] is True and failed["ok"] is False

    spread = copy.deepcopy(report["spread"])
    movement["rows"][1]["keys_moved_between_old_nodes"] = 1
    failed = bench.evaluate_checks(spread, movement)
    assert failed["spread_ok"] is True and failed["movement_ok"] is False and failed["ok"] is False
    assert failed["keys_moved_between_old_nodes"] == 1


def test_main_exits_1_on_a_failed_check_and_json_prints_one_line(
    bench: ModuleType, report: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = copy.deepcopy(report)
    failing["checks"].update(spread=1.3, spread_ok=False, ok=False)
    monkeypatch.setattr(bench, "run_bench", lambda args: failing)
    assert bench.main(["--quick"]) == 1
    assert "acceptance checks: FAILED" in capsys.readouterr().out
    assert bench.main(["--quick", "--json"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["checks"]["ok"] is False


def test_too_few_keys_for_the_memo_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--keys", "5000"])
