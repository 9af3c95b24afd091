"""Acceptance: a real local cluster grows from 3 to 5 nodes and shrinks back to 3 under a read/write load, with
linearizable results and every acknowledged write readable afterwards, in single mode (partitions move) and in
leader mode (each partition's Raft group of three changes its members one at a time).

Client tasks (``kvstore.client.AsyncClient``, routing by the partition map) read, write and compare-and-set a
few registers and put unique keys, recording a Jepsen-style history, while the test adds two nodes and then
removes two (a founder and one of the added nodes) with ``LocalCluster.add_node`` / ``remove_node``. Partitions
move under the load: ops on a moving partition may fail (definitely, or time out indefinitely), and the history
says so. Then the project's linearizability checker judges the whole history, and every acknowledged
unique-key write is read back through each remaining node (which forwards it to the key's owner).

Nothing here measures time: the workload runs for as long as the membership changes take, and the assertions
are about what the history and the reads show.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chaos.checkers import linearizable
from chaos.history import PRECONDITION_FAILED
from chaos.run_sim import Recorder
from chaos.workloads import PlannedOp
from kvstore.client import AsyncClient
from kvstore.cluster import LocalCluster, cluster_view
from kvstore.errors import ErrorCode, KvError

WORKERS = 8
REGISTERS = 4
# Share of ops on the registers (reads, writes, cas); the rest are puts of unique keys.
REGISTER_SHARE = 0.6
CLIENT_TIMEOUT_S = 5.0
MEMBERSHIP_TIMEOUT_S = 60.0
# Ops each worker runs before the membership changes start and after they end, so that each phase sees load.
SETTLE_OPS = 40
CHECK_TIME_LIMIT_S = 60.0
# Concurrent reads per node when reading the acknowledged writes back.
READERS = 64


@dataclass
class Load:
    recorder: Recorder = field(default_factory=Recorder)
    started_s: float = field(default_factory=time.monotonic)
    next_process: int = WORKERS
    next_value: int = 1
    # Unique keys whose put was acknowledged, and the value written.
    acknowledged: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ops_done: list[int] = field(default_factory=lambda: [0] * WORKERS)

    def ms(self) -> int:
        return round((time.monotonic() - self.started_s) * 1000)

    def value(self) -> int:
        self.next_value += 1
        return self.next_value - 1

    def new_process(self) -> int:
        self.next_process += 1
        return self.next_process - 1

    async def run(self, process: int, op: PlannedOp, client: AsyncClient) -> tuple[str, object]:
        """Run ``op`` through ``client`` into the history: ("ok", read value) or the outcome of its failure."""
        assert op.key is not None
        self.recorder.invoke(process, op, self.ms())
        try:
            if op.f == "read":
                found = await client.get(op.key)
                value: object = None if found is None else int(found.value)
            elif op.f == "write":
                await client.put(op.key, str(op.value))
                value = op.value
            else:
                expected, new = op.value
                await client.cas(op.key, None if expected is None else str(expected), str(new))
                value = op.value
        except KvError as exc:
            if exc.code is ErrorCode.PRECONDITION_FAILED:
                outcome = ("fail", None, PRECONDITION_FAILED)
            else:
                outcome = ("fail" if exc.definite else "info", None, exc.code.value)
            self.recorder.complete(process, op, outcome, self.ms())
            return outcome[0], None
        self.recorder.complete(process, op, ("ok", value, None), self.ms())
        return "ok", value


async def worker(index: int, load: Load, client: AsyncClient) -> None:
    rng = random.Random(index)
    process = index
    last_seen: dict[str, int | None] = {}
    unique = 0
    while not (load.stop.is_set() and load.ops_done[index] >= SETTLE_OPS):
        if rng.random() < REGISTER_SHARE:
            key = f"register/{rng.randrange(REGISTERS)}"
            roll = rng.random()
            if roll < 0.4:
                op = PlannedOp("read", key, None)
            elif roll < 0.7:
                op = PlannedOp("write", key, load.value())
            else:
                op = PlannedOp("cas", key, (last_seen.get(key), load.value()))
        else:
            key = f"unique/{index}/{unique}"
            unique += 1
            op = PlannedOp("write", key, load.value())
        outcome, value = await load.run(process, op, client)
        if outcome == "ok" and op.f == "read":
            last_seen[key] = value  # type: ignore[assignment]
        elif outcome == "ok" and op.f == "cas":
            last_seen[key] = op.value[1]
        elif outcome == "ok" and key.startswith("unique/"):
            load.acknowledged[key] = op.value
        if outcome == "info":
            process = load.new_process()  # the op stays open to the end of the history, as Jepsen's do
        load.ops_done[index] += 1


async def grow_and_shrink(cluster: LocalCluster, load: Load) -> list[str]:
    """Add two nodes, remove a founder and an added node; return the ids removed."""
    while min(load.ops_done) < SETTLE_OPS:
        await asyncio.sleep(0.05)
    added = [await asyncio.to_thread(cluster.add_node, MEMBERSHIP_TIMEOUT_S) for _ in range(2)]
    removed = ["n2", added[0]]
    for node_id in removed:
        await asyncio.to_thread(cluster.remove_node, node_id, MEMBERSHIP_TIMEOUT_S)
    # Each worker runs SETTLE_OPS more on the final layout.
    load.ops_done = [0] * WORKERS
    load.stop.set()
    return removed


async def read_back(url: str, load: Load) -> dict[str, int | None]:
    """Every acknowledged unique key, read through the node at ``url`` only (it forwards to the owner), a few
    reads at a time; the reads go into the history too."""
    got: dict[str, int | None] = {}
    keys = sorted(load.acknowledged)
    async with AsyncClient(url, timeout_s=CLIENT_TIMEOUT_S, route_by_map=False) as client:

        async def reader(share: list[str]) -> None:
            for key in share:
                outcome, value = await load.run(load.new_process(), PlannedOp("read", key, None), client)
                assert outcome == "ok", f"reading {key} through {url}: {outcome}"
                got[key] = value  # type: ignore[assignment]

        await asyncio.gather(*(reader(keys[i::READERS]) for i in range(READERS)))
    return got


async def scenario(cluster: LocalCluster) -> tuple[Load, list[str], dict[str, dict[str, int | None]]]:
    load = Load()
    async with AsyncClient(cluster.urls(), timeout_s=CLIENT_TIMEOUT_S) as client:
        workers = [asyncio.create_task(worker(i, load, client)) for i in range(WORKERS)]
        try:
            removed = await grow_and_shrink(cluster, load)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    reads = {node.node_id: await read_back(node.url, load) for node in cluster.config.nodes}
    return load, removed, reads


@pytest.mark.parametrize("mode", ["single", "leader"])
def test_cluster_grows_to_five_and_shrinks_to_three_under_load(cluster_dir: Path, mode: str) -> None:
    """In leader mode the partitions' Raft groups change one node at a time (learner, promotion, removal) instead
    of moving; the same history must come out linearizable with nothing acknowledged lost."""
    cluster = LocalCluster.create(cluster_dir, nodes=3, fsync="always", mode=mode)
    with cluster:
        cluster.up()
        load, removed, reads = asyncio.run(scenario(cluster))

        # The cluster is three nodes again, n2 (a founder) and the first added node gone, every member agreeing.
        assert removed == ["n2", "n4"]
        assert cluster.config.node_ids == ("n1", "n3", "n5")
        assert cluster.config.initial_nodes == ("n1", "n2", "n3")
        assert sorted(r.node_id for r in cluster.state().nodes) == ["n1", "n3", "n5"]
        views = {node.node_id: cluster_view(node.url) for node in cluster.config.nodes}
        for node_id, view in views.items():
            assert view is not None, node_id
            roster = {e["node"]: e["state"] for e in view["partition_map"]["roster"]}
            assert roster == {"n1": "active", "n2": "removed", "n3": "active", "n4": "removed", "n5": "active"}
            assert {n for replicas in view["partition_map"]["replicas"] for n in replicas} == {"n1", "n3", "n5"}
            assert view["balanced"] is True
        assert len({view["epoch"] for view in views.values() if view is not None}) == 1

    history = load.recorder.history("grow-shrink")
    ops = history.ops()
    assert any(op.f == "cas" and op.type == "ok" for op in ops)
    assert any(op.f == "read" and op.type == "ok" and op.key.startswith("register/") for op in ops)
    assert load.acknowledged, "no unique-key put was acknowledged"

    # Every acknowledged write readable through every remaining node, with the value written.
    for node_id, got in reads.items():
        assert got == load.acknowledged, f"reads through {node_id} differ from the acknowledged writes"

    result = linearizable.check(history, time_limit_s=CHECK_TIME_LIMIT_S)
    assert result.valid is True, result.to_json()
