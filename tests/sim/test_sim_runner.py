"""`kvstore sim` through the chaos simulator runner: the ops limit, the summary and the command-line face."""

from __future__ import annotations

import argparse
import io
import re
from collections.abc import Sequence

import pytest

from chaos.commands import format_sim_summary, run_sim_command, sim_replay_command, sim_scenario
from chaos.run_sim import run_in_sim
from kvstore import cli
from kvstore.messages import Message


def sim_args(
    seed: int, nodes: int = 3, ops: int = 100, crashes: bool = False, fsync: str = "always", crash_kind: str = "process"
) -> argparse.Namespace:
    return argparse.Namespace(seed=seed, nodes=nodes, ops=ops, crashes=crashes, fsync=fsync, crash_kind=crash_kind)


def test_the_run_does_exactly_its_ops_then_reads_every_key() -> None:
    result = run_in_sim(sim_scenario(3, 250), 5)
    invokes = [e for e in result.history.events if e.type == "invoke"]
    keys = sorted({e.key for e in invokes})
    assert len(invokes) == result.stats["ops"] == 250 + len(keys)
    assert [e.f for e in invokes[250:]] == ["read"] * len(keys)
    assert result.stats["crashes"] == 0 and result.valid is True
    assert result.stats["messages_delivered"] > 0 and result.stats["virtual_ms"] > 0


def test_summary_counts_every_operation_and_ends_with_the_trace_hash() -> None:
    result = run_in_sim(sim_scenario(3, 250), 5)
    lines = format_sim_summary(result).splitlines()
    assert lines[0] == "kvstore sim: seed=5 nodes=3 ops=250 fsync=always crashes=no"
    assert re.fullmatch(r"trace-hash: [0-9a-f]{64}", lines[-1])
    assert lines[-1] == f"trace-hash: {result.stats['trace_hash']}"
    table = [line.split() for line in lines if line.split()[0] in ("read", "write", "cas")]
    assert sum(int(n) for row in table for n in row[1:]) == result.stats["ops"]
    acknowledged = result.checkers["lost-writes"]["acknowledged_writes"]
    assert f"lost-writes: valid, 0 of {acknowledged} acknowledged writes lost" in lines
    assert "linearizable: valid" in lines


# A seed whose process crashes under fsync=never land within a second of acknowledged writes, before the
# periodic write-out saved them.
NEVER_LOSES_SEED = 3


def test_summary_lists_lost_writes() -> None:
    result = run_in_sim(sim_scenario(3, 400, crashes=True, fsync="never"), NEVER_LOSES_SEED)
    lost = result.checkers["lost-writes"]
    assert lost["lost_count"] > 0
    lines = format_sim_summary(result).splitlines()
    assert f"lost-writes: invalid, {lost['lost_count']} of {lost['acknowledged_writes']} acknowledged writes lost" in (
        lines)
    assert any(line.startswith(f"  {lost['lost'][0]['key']}: acknowledged ") for line in lines)


def test_a_single_node_delivers_no_messages() -> None:
    single = run_in_sim(sim_scenario(1, 50), 2)
    assert single.stats["messages_delivered"] == 0 and single.valid is True


def test_the_command_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--seed", "4", "--nodes", "2", "--ops", "40"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"trace-hash: {run_in_sim(sim_scenario(2, 40), 4).stats['trace_hash']}"
    assert cli.main(["sim", "--seed", "4", "--nodes", "0"]) == cli.EXIT_USAGE
    assert cli.main(["sim", "--seed", "4", "--ops", "0"]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit):
        cli.main(["sim", "--seed", "4", "--fsync", "sometimes"])


def test_lost_writes_fail_the_command_only_under_fsync_always() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_sim_command(sim_args(NEVER_LOSES_SEED, ops=400, crashes=True, fsync="never"), out, err) == 0
    assert "lost-writes: invalid" in out.getvalue() and err.getvalue() == ""


def test_replay_command_names_every_non_default_option() -> None:
    assert sim_replay_command(7, 3, 100) == "kvstore sim --seed 7 --nodes 3 --ops 100"
    assert sim_replay_command(7, 5, 10, crashes=True, fsync="never") == (
        "kvstore sim --seed 7 --nodes 5 --ops 10 --crashes --fsync never"
    )
    assert sim_replay_command(7, 5, 10, crashes=True, fsync="never", crash_kind="power") == (
        "kvstore sim --seed 7 --nodes 5 --ops 10 --crashes --crash-kind power --fsync never"
    )


def test_power_losses_under_never_lose_more_than_process_crashes() -> None:
    # Under never nothing is fsynced: a power loss throws away every write since the last 30 s writeback,
    # a process crash only what the node had not yet written out (about the last second).
    # Seed 3 at 1000 ops: 74 acknowledged writes lost to process crashes, 253 to power losses.
    process = run_in_sim(sim_scenario(3, 1000, crashes=True, fsync="never"), 3)
    power = run_in_sim(sim_scenario(3, 1000, crashes=True, fsync="never", crash_kind="power"), 3)
    assert format_sim_summary(power).splitlines()[0].endswith("crashes=power")
    assert power.checkers["lost-writes"]["lost_count"] > process.checkers["lost-writes"]["lost_count"] > 0


def negative_delay(self: object, now_ms: int, msg: Message) -> Sequence[int]:
    return (-1,)


def test_a_broken_run_prints_the_seed_and_the_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chaos.run_sim.ChaosPolicy.on_send", negative_delay)
    out, err = io.StringIO(), io.StringIO()
    assert run_sim_command(sim_args(2, ops=20), out, err) == 1
    message = err.getvalue()
    assert "seed=2" in message and "negative delay" in message
    assert "replay with: kvstore sim --seed 2 --nodes 3 --ops 20" in message
    assert out.getvalue() == ""


def test_an_invalid_history_under_fsync_always_prints_the_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chaos.run_sim.run_checkers", lambda *a, **k: {"lost-writes": {
        "valid": False, "acknowledged_writes": 1, "lost_count": 0, "lost": []}})
    out, err = io.StringIO(), io.StringIO()
    assert run_sim_command(sim_args(3, ops=20), out, err) == 1
    assert "lost-writes: invalid" in out.getvalue()
    assert err.getvalue().strip() == (
        "seed=3: the history is not valid under fsync=always; replay with: kvstore sim --seed 3 --nodes 3 --ops 20")
