"""kill -9 of the busiest leader of a real 3-node leader-mode cluster under a write load, twice: nothing the
cluster acknowledged is lost. It runs ``bench/failover.py``, which also times each failover; no timing is
asserted here (the bench records it in BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

from unit.bench_loader import load_bench

KILLS = 2
WRITERS = 3


def test_two_leader_kills_under_load_lose_no_acknowledged_write(tmp_path: Path) -> None:
    bench = load_bench("failover")
    report = bench.run_failover(tmp_path / "cluster", kills=KILLS, writers=WRITERS)
    assert len(report.rounds) == KILLS
    # Each victim led partitions when it was killed, and the cluster took writes around the kills.
    assert all(r.partitions_led > 0 for r in report.rounds)
    assert report.acknowledged > 0
    assert report.lost == {}
