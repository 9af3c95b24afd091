"""run_sim, its summary and its command-line face."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from kvstore.messages import Message
from kvstore.sim.events import SimulationError
from kvstore.sim.runner import format_summary, main_args, replay_command, run_sim, simulate


def test_summary_counts_every_operation_and_ends_with_the_trace_hash() -> None:
    summary = run_sim(5, 3, 250)
    assert sum(sum(counts.values()) for counts in summary.outcomes.values()) == 250
    assert summary.stats.crashes == 0 and summary.lost_writes == ()
    assert summary.stats.delivered > 0 and summary.virtual_ms > 0
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0] == "kvstore sim: seed=5 nodes=3 ops=250 fsync=always crashes=no"
    assert re.fullmatch(r"trace-hash: [0-9a-f]{64}", lines[-1])
    assert lines[-1] == f"trace-hash: {summary.trace_hash}"
    assert f"acknowledged writes lost: 0 of {summary.acknowledged_writes}" in lines
    put_line = next(line for line in lines if line.startswith("put "))
    assert put_line.split()[1:3] == [str(summary.outcomes["put"].get("ok", 0)), "0"]


def test_summary_lists_lost_writes() -> None:
    summary = run_sim(1, 3, 200, crashes=True, fsync="never")
    text = format_summary(summary)
    assert f"acknowledged writes lost: {len(summary.lost_writes)} of {summary.acknowledged_writes}" in text
    assert f"  {summary.lost_writes[0]}" in text.splitlines()


def test_a_single_node_and_an_empty_workload() -> None:
    single = run_sim(2, 1, 50)
    assert single.stats.delivered == 0
    assert sum(sum(c.values()) for c in single.outcomes.values()) == 50
    empty = run_sim(2, 3, 0)
    assert empty.acknowledged_writes == 0 and empty.lost_writes == ()


def test_main_args_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_args(["--seed", "4", "--nodes", "2", "--ops", "40"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"trace-hash: {run_sim(4, 2, 40).trace_hash}"
    with pytest.raises(SystemExit):
        main_args(["--seed", "4", "--nodes", "0"])
    with pytest.raises(SystemExit):
        main_args(["--seed", "4", "--fsync", "sometimes"])


def test_replay_command_names_every_non_default_option() -> None:
    assert replay_command(7, 3, 100) == "kvstore sim --seed 7 --nodes 3 --ops 100"
    assert replay_command(7, 5, 10, crashes=True, fsync="never") == (
        "kvstore sim --seed 7 --nodes 5 --ops 10 --crashes --fsync never"
    )


class NegativeDelay:
    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (-1,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


def test_a_failing_run_prints_the_seed_and_the_replay_command() -> None:
    with pytest.raises(SimulationError) as caught:
        simulate(2, 3, 20, fault_policy=NegativeDelay())
    message = str(caught.value)
    assert "seed=2" in message
    assert "replay with: kvstore sim --seed 2 --nodes 3 --ops 20" in message
    assert "negative delay" in message
