"""bench/partition_scale.py, --quick: lookups at 10,000 partitions beside a dict, and one node joining a 5-node
cluster of 20,000 keys; every figure is there and sane (no timing targets)."""

from __future__ import annotations

import contextlib
import io
import json
from types import ModuleType
from typing import Any

import pytest
from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("partition_scale")


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


def test_quick_run_prints_both_parts_then_the_json_line(quick: tuple[int, list[str]], report: dict[str, Any]) -> None:
    code, lines = quick
    assert code == 0, lines
    text = "\n".join(lines[:-1])
    assert "1. Lookups at 10,000 partitions" in text
    assert "2. One node joins 5" in text
    assert "every key on one node" in text
    assert report["bench"] == "partition_scale" and report["quick"] is True and report["ok"] is True
    assert (report["runs"], report["join_runs"]) == (1, 1)


def test_lookups_at_10k_partitions_beside_the_dict(report: dict[str, Any]) -> None:
    lk = report["lookups"]
    assert lk["partitions"] == 10_000 and lk["ring_tokens"] == 10_000 and lk["ranges"] == 10_000
    assert lk["keys"] == 20_000
    rows = {r["name"]: r for r in lk["rows"]}
    assert set(rows) == {"hash_ring", "hash_partitions", "range_map"}
    assert rows["hash_ring"]["maps"] == rows["hash_partitions"]["maps"] == "key -> node"
    assert rows["range_map"]["maps"] == "key -> partition"
    for name, r in rows.items():
        for figure in ("ns_per_lookup", "lookups_per_s", "dict_ns_per_lookup", "dict_lookups_per_s", "ratio"):
            assert r[figure] > 0, (name, figure)
        assert len(r["ratio_runs"]) == len(r["lookups_per_s_runs"]) == 1
        # One run: the ratio is that run's dict time over the subject's (4 significant digits each).
        assert r["ratio"] == pytest.approx(r["dict_ns_per_lookup"] / r["ns_per_lookup"], rel=2e-3)
        assert r["lookups_per_s"] == pytest.approx(1e9 / r["ns_per_lookup"], rel=2e-3)


def test_the_join_moves_about_a_sixth_to_the_new_node_and_loses_no_key(report: dict[str, Any]) -> None:
    jn = report["join"]
    assert (jn["nodes_before"], jn["keys"], jn["value_bytes"], jn["fsync"]) == (5, 20_000, 100, "batch")
    (run,) = jn["runs"]
    assert run["partitions"] == 64 and run["new_node"] == "n6"
    assert run["data_keys"] == run["records_after"] == sum(run["node_keys_after"]) == 20_000
    assert len(run["node_keys_after"]) == 6 and run["node_keys_after"][-1] == run["moved_keys"]
    # Keys of ~22 bytes and values of 100: every record is counted at its key and value.
    assert 20_000 * 100 < run["data_bytes"] < 20_000 * 150
    # Whole partitions move, within the rebalancer's 10% of the new node's 64/6 (and hash partitions vary a bit).
    assert 9 <= run["moved_partitions"] <= 12
    assert run["min_keys"] == pytest.approx(20_000 / 6, rel=1e-3)
    assert 0.75 < run["keys_over_min"] < 1.25 and 0.75 < run["bytes_over_min"] < 1.25
    assert run["streamed_bytes"] >= run["moved_bytes"] > 0
    assert run["join_timed_from"] == "the membership order"
    assert 0 < run["join_s"] <= run["add_node_s"]
    for figure in ("load_s", "load_keys_per_s", "disk_mb_per_s", "moved_mb_per_s", "moved_keys_per_s", "disk_ratio"):
        assert run[figure] > 0, figure
    assert run["disk_ratio"] == pytest.approx(run["moved_mb_per_s"] / run["disk_mb_per_s"], rel=2e-3)
    assert jn["median"]["join_s"] == run["join_s"]


def test_lookups_alone_print_one_json_line(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--join-runs", "0", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    report = json.loads(out[0])
    assert report["join"] is None and report["ok"] is True and len(report["lookups"]["rows"]) == 3


def test_too_few_lookup_keys_for_the_memo_are_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--lookup-keys", "5000"])
