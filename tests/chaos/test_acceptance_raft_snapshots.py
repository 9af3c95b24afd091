"""Leader mode with the Raft log compacted every few entries: followers that were down or cut off catch up by
snapshot while crashes and partitions go on, and the history stays linearizable, loses no acknowledged write,
and every copy converges."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from chaos.run_sim import run_in_sim
from chaos.scenario import load

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
NAME = "register-leader.toml"


SEEDS = [(1, "process"), (5, "process"), (3, "power")]
# Snapshots sent per seed, so the last test can check the runs were not vacuous.
_SNAPSHOTS: dict[tuple[int, str], int] = {}


@pytest.mark.parametrize(("seed", "crash_kind"), SEEDS)
def test_leader_mode_with_snapshots_under_crashes_and_partitions_is_valid(seed: int, crash_kind: str) -> None:
    scenario = load(SCENARIOS / NAME)
    scenario = replace(
        scenario,
        name="register-leader-snapshots",
        cluster=replace(scenario.cluster, raft_compact_entries=8),
        nemesis=replace(scenario.nemesis, crash_kind=crash_kind),
    )
    result = run_in_sim(scenario, seed)
    verdicts = {k: v.get("valid") for k, v in result.checkers.items()}
    assert result.valid is True, (seed, verdicts)
    assert result.checkers["lost-writes"]["lost_count"] == 0, seed
    assert result.checkers["convergence"]["valid"] is True, seed
    assert sum(1 for e in result.history.events if e.type == "ok") > 500, seed
    _SNAPSHOTS[(seed, crash_kind)] = result.stats["raft_snapshots"]


def test_the_runs_above_caught_followers_up_by_snapshot() -> None:
    """Not vacuous: across the seeds, followers behind compaction took snapshots (a seed whose faults never left a
    follower behind the compacted log needs none)."""
    for seed, crash_kind in SEEDS:
        if (seed, crash_kind) not in _SNAPSHOTS:
            test_leader_mode_with_snapshots_under_crashes_and_partitions_is_valid(seed, crash_kind)
    assert sum(_SNAPSHOTS.values()) > 0, _SNAPSHOTS
