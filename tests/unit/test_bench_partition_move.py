"""bench/partition_move.py, --quick: two node processes move half their partitions, every key is read back
from the target, and the report holds every figure (no timing targets)."""

from __future__ import annotations

import contextlib
import io
import json

from bench_loader import load_bench


def test_quick_run_moves_every_partition_of_the_first_node_and_reports_it() -> None:
    bench = load_bench("partition_move")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--quick"])
    lines = out.getvalue().splitlines()
    assert code == 0, lines
    report = json.loads(lines[-1])
    (run,) = report["runs"]
    assert (report["keys"], report["partitions"], run["keys"], run["partitions_moved"]) == (5000, 16, 5000, 8)
    # Half the partitions carry about half of 5,000 keys of ~112 bytes (key and value).
    assert 200_000 < run["moved_data_bytes"] < 400_000
    assert run["streamed_bytes"] >= run["moved_data_bytes"]
    assert run["move_s"] > 0 and run["disk_mb_per_s"] > 0 and run["ratio"] > 0
    assert "partitions moved n1 -> n2" in lines[0]
