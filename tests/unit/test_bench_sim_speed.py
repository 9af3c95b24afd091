"""bench/sim_speed.py on a short run: every figure is there, positive and consistent (no timing targets)."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("sim_speed")


def test_a_short_run_reports_every_figure(bench: ModuleType) -> None:
    report = bench.measure(seed=3, runs=2, duration_ms=400, codec_messages=200)
    assert report["deterministic"] is True and report["valid"] is True
    assert report["runs"] == 2 and report["nodes"] == 5
    for name in ("virtual_ms", "ops", "messages_delivered", "events", "wall_s", "cpu_s", "times_real_time",
                 "times_real_time_cpu", "sim_msgs_per_s", "events_per_s", "codec_round_trips_per_s",
                 "sim_over_codec", "sim_over_codec_cpu", "check_wall_s", "check_cpu_s", "total_wall_s",
                 "times_real_time_with_checking"):
        assert report[name] > 0, name
    assert report["wall_s_min"] <= report["wall_s"] <= report["wall_s_max"]
    assert report["times_real_time"] == pytest.approx(report["virtual_ms"] / 1000 / report["wall_s"])
    assert report["sim_over_codec"] == pytest.approx(report["sim_msgs_per_s"] / report["codec_round_trips_per_s"])
    assert len(report["trace_hash"]) == 64
    # The simulation is timed apart from the checkers, which are reported beside it.
    assert report["checkers"] == ["lost-writes"]
    assert report["total_wall_s"] > report["wall_s"]
    assert report["times_real_time_with_checking"] < report["times_real_time"]


def test_main_prints_the_table_and_one_json_line(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--runs", "1", "--duration-ms", "300", "--codec-messages", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "x real time" in out[3] and "target 100x" in out[3]
    assert "checking (lost-writes), not in the figures above" in out[4]
    assert json.loads(out[-1])["simulator"]["deterministic"] is True


def test_the_typical_message_survives_the_codec(bench: ModuleType) -> None:
    bench.codec_round_trips(bench.typical_message(bench.scenario(1, 1000)), 3)
