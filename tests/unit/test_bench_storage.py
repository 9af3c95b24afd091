"""bench/storage.py's measurements on tiny sizes: every figure is there and positive (no timing assertions)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("storage")


def _positive_numbers(value: Any, where: str = "report") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _positive_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _positive_numbers(item, f"{where}[{i}]")
    else:
        assert isinstance(value, int | float) and value > 0, f"{where} = {value!r}"


def test_quick_core_functions_report_every_figure(bench: ModuleType, tmp_path: Path) -> None:
    sizes = bench.Sizes(
        raw_fsyncs=5,
        durable_writes={1: 5, 100: 200},
        cpu_writes={1: 20, 100: 200},
        checksum_rows=50,
        recovery_keys=300,
        recovery_log_rows=30,
        recovery_journal_rows=40,
        log_appends={1: 4, 16: 32, 128: 256},
    )
    values = bench.make_values(16)
    recovery_file = bench.build_recovery_file(
        tmp_path, sizes.recovery_keys, sizes.recovery_log_rows, values, sizes.recovery_journal_rows
    )
    runs = [bench.run_once(tmp_path, sizes, run, values, recovery_file) for run in range(2)]
    summary = bench.summarize(runs)

    assert set(summary) == {"durable", "cpu", "recovery", "log"}
    durable, cpu, recovery, log = summary["durable"], summary["cpu"], summary["recovery"], summary["log"]
    assert set(durable) == {"raw_fsyncs_per_s", "runs_raw_fsyncs_per_s", "group_1", "group_100"}
    assert set(cpu) == {"checksum_us_per_row", "group_1", "group_100"}
    for group in ("group_1", "group_100"):
        for section in (durable, cpu):
            assert {"storage_writes_per_s", "raw_sqlite_rows_per_s", "storage_over_raw_sqlite"} <= set(section[group])
            assert len(section[group]["storage_over_raw_sqlite"]["runs_ratio"]) == 2
        assert "syncs_over_raw_fsync" in durable[group]
    assert {"open_s", "plain_read_s", "quick_check_s", "open_over_plain_read"} <= set(recovery)
    assert set(log) == {"group_1", "group_16", "group_128"}
    for group in log.values():
        assert {"appends_per_s", "syncs_per_s", "sync_us_per_append", "syncs_over_raw_fsync"} <= set(group)
        assert len(group["syncs_over_raw_fsync"]["runs_ratio"]) == 2
    _positive_numbers(summary)
    # Only the recovery file is left behind: every measurement removes its own database.
    assert [p.name for p in tmp_path.iterdir()] == ["recovery"]
