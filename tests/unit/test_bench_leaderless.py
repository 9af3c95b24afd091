"""bench/leaderless.py: the ratios to leader mode from samples, the in-process Merkle round on known copies, and a
--quick smoke run against real 3-node clusters (leader and leaderless); no timing targets asserted."""

from __future__ import annotations

import contextlib
import io
import json

from bench_loader import load_bench

from replication import dvv
from replication.vclock import VectorClock

bench = load_bench("leaderless")


def sample(ops_per_s: float, p50_ms: float, per_op: float) -> object:
    return bench.Sample(ops_per_s, p50_ms, 2 * p50_ms, errors=0, acknowledged=100, messages_per_write=per_op)


def state(node: str, counter: int, value: bytes) -> bytes:
    """The encoded state of one write, as a replica stores it."""
    dot = (node, counter)
    return dvv.encode(dvv.Versions((dvv.Sibling(dot, value, 0),), VectorClock(((node, counter),))))


def test_ratios_pair_each_leaderless_run_with_leader_mode_of_the_same_run_size_and_op() -> None:
    samples = {
        (3, "leader", "-", "PUT"): [sample(100, 2.0, 8.0), sample(200, 4.0, 8.0), sample(400, 1.0, 8.0)],
        (3, "leaderless", "1", "PUT"): [sample(150, 1.0, 4.0), sample(100, 2.0, 4.0), sample(400, 3.0, 4.0)],
    }
    rows = {(r["mode"], r["quorum"]): r for r in bench.summarize_throughput(samples)}
    # Per run 1.5, 0.5 and 1.0: the median is 1.0; p50 ratios 0.5, 0.5, 3.0.
    assert (rows[("leaderless", "1")]["ratio_to_leader"], rows[("leaderless", "1")]["p50_ratio_to_leader"]) == (
        1.0,
        0.5,
    )
    assert rows[("leaderless", "1")]["messages_per_op"] == 4.0
    assert rows[("leader", "-")]["ratio_to_leader"] is None
    assert rows[("leader", "-")]["runs_ops_per_s"] == [100, 200, 400]


def test_a_merkle_round_between_equal_copies_sends_only_the_root() -> None:
    copy = {f"k{i:04d}": state("n1", i + 1, b"v") for i in range(200)}
    stats, equal_after = bench.merkle_round(copy, dict(copy))
    # AeStart carries the 16-byte root; the peer's AeDone carries nothing.
    assert (stats.bytes_sent, stats.bytes_received, stats.keys_sent, stats.keys_received) == (16, 0, 0, 0)
    assert equal_after


def test_a_merkle_round_brings_the_stale_copy_what_it_missed_for_less_than_a_full_copy() -> None:
    source = {f"k{i:04d}": state("n1", i + 1, b"v" * 100) for i in range(1000)}
    stale = {k: s for k, s in source.items() if not k.endswith("7")}
    stats, equal_after = bench.merkle_round(source, stale)
    assert stats.keys_received == 100 and stats.keys_sent == 0
    assert equal_after
    full_copy = sum(len(k) + len(s) for k, s in source.items())
    assert stats.bytes_sent + stats.bytes_received < full_copy / 2


def test_a_heal_that_most_runs_did_not_finish_has_no_median_time() -> None:
    runs = [bench.HealSample(False, None, 7), bench.HealSample(False, 3.0, 0), bench.HealSample(False, None, 5)]
    (row,) = bench.summarize_heal(runs, 30.0)
    assert (row["converged_runs"], row["converged_s_median"], row["diverged_keys_at_timeout"]) == (1, None, [7, 5])


def test_quick_run_measures_both_modes_and_shows_anti_entropy_repairs_what_nothing_else_does() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--quick", "--json", "--nodes", "3", "--quorums", "1,abd"])
    assert code == 0
    report = json.loads(out.getvalue().splitlines()[-1])
    rows = {(r["mode"], r["quorum"], r["op"]): r for r in report["throughput"]}
    assert sorted(rows) == sorted(
        [("leader", "-", op) for op in ("GET", "PUT")]
        + [("leaderless", q, op) for q in ("1", "abd") for op in ("GET", "PUT")]
    )
    for key, row in rows.items():
        assert row["errors"] == 0 and row["ops_per_s"] > 0 and row["messages_per_op"] > 0, key
        assert (row["ratio_to_leader"] is None) == (key[0] == "leader"), key
    # ABD writes in two phases, each a request and an answer per other replica; a w=1 write in one.
    assert rows[("leaderless", "abd", "PUT")]["messages_per_op"] > rows[("leaderless", "1", "PUT")]["messages_per_op"]
    heal = {c["anti_entropy"]: c for c in report["convergence"]}
    assert heal[True]["converged_runs"] == 1
    # Without anti-entropy nothing brings n3 the 100 keys written while it was down (3 nodes: no hints; no reads).
    assert (heal[False]["converged_runs"], heal[False]["diverged_keys_at_timeout"]) == (0, [100])
    merkle = report["merkle"]
    assert merkle["keys_differing"] == 100
    assert merkle["rounds_equal_after"] == merkle["partitions"] > 0
    assert merkle["merkle_bytes"] > 0 and merkle["full_copy_bytes"] > 0
