"""Issue acceptance: the single-owner cluster is linearizable under crashes with fsync=always, and the
checkers catch the lost writes of fsync=never, in the simulator; the same scenario runs on a real cluster."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scenario_files import SCENARIOS, replay, run_real_joins_and_leaves

from chaos.run_real import run_on_real_cluster
from chaos.run_sim import run_in_sim
from chaos.scenario import load


@pytest.mark.parametrize("seed", range(1, 9))
def test_fsync_always_under_crashes_is_linearizable(seed: int) -> None:
    result = run_in_sim(load(SCENARIOS / "register-crash.toml"), seed)
    assert result.stats["crashes"] >= 4, replay("register-crash.toml", seed)
    assert result.checkers["linearizable"]["valid"] is True, replay("register-crash.toml", seed)
    assert result.checkers["lost-writes"]["lost_count"] == 0, replay("register-crash.toml", seed)
    assert result.valid is True


@pytest.mark.parametrize("seed", range(1, 9))
def test_fsync_never_under_crashes_loses_writes_and_is_caught(seed: int) -> None:
    result = run_in_sim(load(SCENARIOS / "register-crash-fsync-never.toml"), seed)
    name = "register-crash-fsync-never.toml"
    assert result.checkers["linearizable"]["valid"] is False, replay(name, seed)
    lost = result.checkers["lost-writes"]
    assert lost["valid"] is False and lost["lost_count"] > 0, replay(name, seed)
    # The scenario expects exactly that, so a sweep counts the seed as passing.
    assert result.outcome.met is True and result.outcome.anomalies["lost-writes"] == lost["lost_count"]
    # Every lost write is named with the read that proves it.
    assert all(entry["write"]["f"] in ("write", "cas") and "seen_instead" in entry for entry in lost["lost"])
    # The linearizability failure names a key and a stretch of ops that cannot be linearized.
    assert result.checkers["linearizable"]["failing_ops"]


@pytest.mark.parametrize("name", ["register-partitions.toml", "set-crash.toml", "counter-crash.toml",
                                  "append-crash.toml", "register-moves.toml"])
def test_other_shipped_scenarios_are_valid(name: str) -> None:
    result = run_in_sim(load(SCENARIOS / name), 1)
    assert result.valid is True, (replay(name, 1), {k: v.get("valid") for k, v in result.checkers.items()})


def test_the_same_seed_replays_the_same_history() -> None:
    scenario = load(SCENARIOS / "register-partitions.toml")
    first, second = run_in_sim(scenario, 4), run_in_sim(scenario, 4)
    assert [e.to_json() for e in first.history.events] == [e.to_json() for e in second.history.events]
    assert first.stats["trace_hash"] == second.stats["trace_hash"]
    assert first.stats["trace_hash"] != run_in_sim(scenario, 5).stats["trace_hash"]


def test_the_same_scenario_runs_on_a_real_cluster() -> None:
    scenario = load(SCENARIOS / "register-crash.toml")
    scenario = replace(scenario, duration_ms=3000, quiet_ms=300,
                       nemesis=replace(scenario.nemesis, faults=("crash", "partition-halves", "duplicate")))
    lines: list[str] = []
    result = run_on_real_cluster(scenario, seed=5, progress=lines.append)
    assert result.driver == "real"
    assert any("start" in line for line in lines)
    assert result.stats["ops"] > 100
    assert result.checkers["linearizable"]["valid"] is True
    assert result.checkers["lost-writes"]["lost_count"] == 0
    assert {p.kind for p in result.periods} <= {"crash", "partition-halves", "duplicate"}
    assert result.periods and all(p.end_ms is not None for p in result.periods)


@pytest.mark.parametrize("seed", range(1, 5))
def test_partitions_move_under_faults_and_the_history_stays_valid(seed: int) -> None:
    result = run_in_sim(load(SCENARIOS / "register-moves.toml"), seed)
    verdicts = {k: v.get("valid") for k, v in result.checkers.items()}
    assert result.valid is True, (replay("register-moves.toml", seed), verdicts)
    moved = [p.detail for p in result.periods if p.kind == "move" and p.detail.startswith("move partition")]
    assert moved, "the schedule moved no partition"


@pytest.mark.parametrize("seed", range(1, 5))
def test_nodes_join_and_leave_under_faults_and_the_history_stays_valid(seed: int) -> None:
    name = "register-membership.toml"
    result = run_in_sim(load(SCENARIOS / name), seed)
    verdicts = {k: v.get("valid") for k, v in result.checkers.items()}
    assert result.valid is True, (replay(name, seed), verdicts)
    assert result.checkers["lost-writes"]["lost_count"] == 0, replay(name, seed)
    ordered = [(p.kind, p.detail) for p in result.periods if p.kind in ("join", "leave") and "ordered at" in p.detail]
    assert {kind for kind, _ in ordered} == {"join", "leave"}, (replay(name, seed), ordered)
    # Partitions changed hands (every hand-over bumps its partition's epoch once) and the roster changed.
    assert result.stats["partition_changes"] >= 3, replay(name, seed)
    roster = result.stats["roster"]
    assert set(roster) >= {"n1", "n2", "n3"} and set(roster) != {"n1", "n2", "n3"}, roster
    assert sum(state == "active" for state in roster.values()) >= 2, roster
    # By the end every node holds one map and no rebalancer has anything left to move.
    assert result.stats["settled"] is True, replay(name, seed)


def test_joins_and_leaves_replay_from_the_seed() -> None:
    scenario = load(SCENARIOS / "register-membership.toml")
    first, second = run_in_sim(scenario, 2), run_in_sim(scenario, 2)
    assert first.stats == second.stats
    assert [p.detail for p in first.periods] == [p.detail for p in second.periods]
    assert any(p.kind == "join" and "ordered at" in p.detail for p in first.periods)


def test_a_real_cluster_admits_and_drains_nodes_through_the_nemesis() -> None:
    result = run_real_joins_and_leaves("register-membership.toml", duration_ms=4000, quiet_ms=1500, interval_ms=300)
    # The roster the nodes report after the run names a node admitted at run time, and partitions moved.
    assert set(result.stats["roster"]) - {"n1", "n2", "n3"}, result.stats["roster"]
    assert result.stats["partition_changes"] >= 1


@pytest.mark.parametrize("seed", [1, 4, 5])
def test_range_partitions_split_and_merge_under_faults_and_stay_linearizable(seed: int) -> None:
    name = "register-ranges.toml"
    result = run_in_sim(load(SCENARIOS / name), seed)
    verdicts = {k: v.get("valid") for k, v in result.checkers.items()}
    assert result.valid is True, (replay(name, seed), verdicts)
    assert result.checkers["lost-writes"]["lost_count"] == 0, replay(name, seed)
    # The workload's writes split the first range, its deletes emptied ranges that merged, and ranges moved.
    assert result.stats["range_splits"] >= 5 and result.stats["range_merges"] >= 1, (replay(name, seed), result.stats)
    assert result.stats["ranges"] >= 3 and result.stats["partition_changes"] >= 10, result.stats
    assert result.stats["settled"] is True, replay(name, seed)
