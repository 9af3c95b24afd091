"""Seed sweeps of `kvstore sim` runs: many seeded runs with crashes (and message faults), judged by the checkers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chaos.commands import sim_replay_command, sim_scenario
from chaos.run_sim import run_in_sim

OPS = 300


def nodes_for(seed: int) -> int:
    # The seed decides the cluster's shape too: 2 to 5 nodes.
    return 2 + seed % 4


@pytest.mark.parametrize("seed", range(1, 31))
def test_fsync_always_loses_no_acknowledged_write_under_crashes(seed: int) -> None:
    nodes = nodes_for(seed)
    result = run_in_sim(sim_scenario(nodes, OPS, crashes=True), seed)
    assert result.valid is True, (
        f"seed={seed}: {result.checkers}; replay with: {sim_replay_command(seed, nodes, OPS, crashes=True)}"
    )
    assert result.checkers["lost-writes"]["acknowledged_writes"] > 0


@pytest.mark.parametrize("seed", range(1, 11))
def test_message_faults_and_crashes_lose_no_acknowledged_write(seed: int) -> None:
    scenario = sim_scenario(3, OPS, crashes=True)
    faults = ("crash", "drop", "duplicate", "delay", "partition-halves")
    scenario = replace(scenario, nemesis=replace(scenario.nemesis, faults=faults))
    result = run_in_sim(scenario, seed)
    assert result.valid is True, f"seed={seed}: {result.checkers} (faults {faults})"
    assert any(period.kind != "crash" for period in result.periods)  # the message faults did strike


def test_fsync_never_loses_acknowledged_writes_in_a_crash() -> None:
    # The write-out every second keeps most of it through a process crash, not the last second's writes.
    result = run_in_sim(sim_scenario(3, 1000, crashes=True, fsync="never"), 1)
    assert result.stats["crashes"] > 0 and result.stats["syncs"] > 0
    lost = result.checkers["lost-writes"]
    assert 0 < lost["lost_count"] < lost["acknowledged_writes"], sim_replay_command(1, 3, 1000, True, "never")
    assert result.valid is False


def test_fsync_never_loses_more_to_power_losses_than_to_process_crashes() -> None:
    scenario = sim_scenario(3, 1000, crashes=True, fsync="never")
    lost = {
        kind: run_in_sim(replace(scenario, nemesis=replace(scenario.nemesis, crash_kind=kind)), 1)
        .checkers["lost-writes"]["lost_count"]
        for kind in ("process", "power")
    }
    assert 0 < lost["process"] < lost["power"]


def test_fsync_batch_can_lose_the_last_interval() -> None:
    result = run_in_sim(sim_scenario(3, 1000, crashes=True, fsync="batch"), 1)
    lost = result.checkers["lost-writes"]
    assert result.stats["syncs"] > 0
    assert 0 < lost["lost_count"] < lost["acknowledged_writes"]
