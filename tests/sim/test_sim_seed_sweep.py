"""Seed sweeps: many seeded runs with crashes (and message faults), checking that no acknowledged write is lost."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kvstore.messages import Message
from kvstore.sim.runner import replay_command, simulate

OPS = 300


def nodes_for(seed: int) -> int:
    # The seed decides the cluster's shape too: 2 to 5 nodes.
    return 2 + seed % 4


@pytest.mark.parametrize("seed", range(1, 31))
def test_fsync_always_loses_no_acknowledged_write_under_crashes(seed: int) -> None:
    nodes = nodes_for(seed)
    summary = simulate(seed, nodes, OPS, crashes=True).summary
    assert summary.lost_writes == (), (
        f"seed={seed}: acknowledged writes lost: {list(summary.lost_writes)}; "
        f"replay with: {replay_command(seed, nodes, OPS, crashes=True)}"
    )
    assert sum(sum(counts.values()) for counts in summary.outcomes.values()) == OPS


class RandomFaults:
    """Seeded drops, duplicates and delays of peer messages."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        roll = self.rng.random()
        if roll < 0.05:
            return ()
        if roll < 0.20:
            return (0, self.rng.randint(0, 50))
        return (self.rng.randint(0, 10),)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


@pytest.mark.parametrize("seed", range(1, 11))
def test_message_faults_and_crashes_lose_no_acknowledged_write(seed: int) -> None:
    run = simulate(seed, 3, OPS, crashes=True, fault_policy=RandomFaults(seed))
    assert run.summary.lost_writes == (), f"seed={seed}: {list(run.summary.lost_writes)} (with RandomFaults({seed}))"
    outcomes = {code for counts in run.summary.outcomes.values() for code in counts}
    assert "timeout" in outcomes  # the faults did bite


def test_fsync_never_loses_acknowledged_writes_in_a_crash() -> None:
    # Found by running seeds 1.. with fsync=never: seed 1 crashes a node holding acknowledged, unsynced writes.
    summary = simulate(1, 3, 200, crashes=True, fsync="never").summary
    assert summary.stats.crashes > 0 and summary.stats.syncs == 0
    assert len(summary.lost_writes) > 0, replay_command(1, 3, 200, crashes=True, fsync="never")


def test_fsync_batch_can_lose_the_last_interval() -> None:
    summary = simulate(1, 3, 200, crashes=True, fsync="batch").summary
    assert summary.stats.syncs > 0
    assert 0 < len(summary.lost_writes) < summary.acknowledged_writes
