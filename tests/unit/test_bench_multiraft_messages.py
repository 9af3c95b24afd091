"""bench/multiraft_messages.py on a short run: it counts, and at rest the envelopes keep 64 partitions' traffic within
a small constant of one partition's."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("multiraft_messages")


def test_a_short_run_prints_both_counts_and_the_ratio(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--rest-ms", "1000", "--load-ms", "200", "--clients", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    one, many = report["one"], report["many"]
    assert (one["partitions"], many["partitions"]) == (1, 64)
    # One group: nothing to coalesce. 64 groups: 64 times the Raft messages in about 3 times the messages.
    assert one["rest_messages_per_s"] == one["rest_carried_per_s"] > 0
    assert many["rest_carried_per_s"] > 20 * many["rest_messages_per_s"]
    assert report["rest_ratio"] <= 4
    assert one["writes"] > 0 and many["writes"] > 0
    assert many["messages_per_write"] <= many["carried_per_write"]
