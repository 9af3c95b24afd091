"""bench/replication_vs_etcd.py: the ratios and the verdict from samples, and a --quick smoke run against a real
3-node leader-mode cluster (and etcd, when it is installed); no timing targets asserted."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from bench_loader import load_bench

bench = load_bench("replication_vs_etcd")


def sample(puts_per_s: float, p50_ms: float, per_write: float | None = None) -> object:
    return bench.Sample(puts_per_s, p50_ms, 2 * p50_ms, errors=0, acknowledged=100, messages_per_write=per_write)


def test_ratios_pair_each_run_with_etcd_of_the_same_run_and_the_verdict_needs_both_figures() -> None:
    samples = {
        ("etcd", "always", "-", 1): [sample(100, 2.0), sample(200, 2.0), sample(300, 2.0)],
        ("kvstore", "always", "sync", 1): [sample(150, 1.0, 12.0), sample(200, 3.0, 14.0), sample(150, 1.0, 10.0)],
        ("kvstore", "batch", "sync", 1): [sample(400, 1.0, 9.0), sample(400, 1.0, 9.0), sample(400, 1.0, 9.0)],
    }
    rows = {(r["system"], r["fsync"], r["replication"]): r for r in bench.summarize(samples)}
    target = rows[("kvstore", "always", "sync")]
    # Per run 1.5, 1.0 and 0.5: the median is 1.0; p50 ratios 0.5, 1.5, 0.5; messages 12, 14, 10.
    assert (target["ratio_to_etcd"], target["p50_ratio_to_etcd"]) == (1.0, 0.5)
    assert target["messages_per_write"] == 12.0
    assert rows[("etcd", "always", "-")]["ratio_to_etcd"] is None
    assert bench.verdicts(list(rows.values())) == [{"clients": 1, "ratio": 1.0, "p50_ratio": 0.5, "met": True}]


def test_quick_run_reports_sync_puts_and_the_messages_at_rest() -> None:
    out = io.StringIO()
    args = ["--quick", "--json", "--replication", "sync", "--fsync", "always", "--clients", "1"]
    with contextlib.redirect_stdout(out):
        code = bench.main(args)
    assert code == 0
    report = json.loads(out.getvalue().splitlines()[-1])
    kvstore = [r for r in report["results"] if r["system"] == "kvstore"]
    assert [(r["fsync"], r["replication"], r["clients"], r["errors"]) for r in kvstore] == [("always", "sync", 1, 0)]
    assert kvstore[0]["puts_per_s"] > 0
    assert kvstore[0]["messages_per_write"] > 0
    # 64 partitions, each with a leader that tells its two followers it is alive: messages, in batches, at rest.
    rest = report["at_rest"]["always"]
    assert rest["total"] > 0 and rest["batches"] > 0
    # The report keeps 4 significant digits of each rate.
    kinds = sum(rate for kind, rate in rest.items() if kind not in ("total", "batches"))
    assert rest["total"] == pytest.approx(kinds, rel=1e-3)
