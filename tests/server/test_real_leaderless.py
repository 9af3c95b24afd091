"""Issue 15's real-cluster acceptance, as a bounded sample: a 3-node leaderless cluster of real processes (sqlite,
fsync always). Under a read/write load with ``consistency=linearizable`` and ``r=2&w=2`` one node is killed with
SIGKILL and restarted: the history is linearizable (``chaos.checkers.linearizable``). And two blind writes to one
key through two nodes come back as two siblings."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.checkers import linearizable
from chaos.history import from_dicts
from kvstore.client import AsyncClient
from kvstore.cluster import LocalCluster
from kvstore.errors import KvError

KEYS = ("x", "y")
# Two clients per node, each bound to its node: every node coordinates reads and writes.
CLIENTS_PER_NODE = 2
# Successful ops before the kill, while the node is down, and after its restart: the nemesis acts on these counts,
# never on time.
OPS_PER_STAGE = 40
# A bound on each client's ops, so that a cluster that stops answering ends the run rather than hanging it.
MAX_OPS_PER_CLIENT = 200
# A bound on one request (the nodes time out a quorum after their request_timeout_ms anyway).
CLIENT_TIMEOUT_S = 5.0
CHECK_TIME_LIMIT_S = 30.0
STAGES = ("before", "down", "after")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 leaderless nodes, N=3; every process is stopped when the test ends."""
    local = LocalCluster.create(tmp_path / "cluster", nodes=3, mode="leaderless", replicas=3)
    with local:
        local.up()
        yield local


class Recorder:
    """Clients' ops as a history: each invocation and its completion, stamped in real time, and the stage of the
    nemesis (before the kill, down, after the restart) each completion happened in."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.stage = STAGES[0]
        self.ok_by_stage: dict[str, set[str]] = {name: set() for name in STAGES}
        self.ok_count = {name: 0 for name in STAGES}
        self._next_value = 0

    def value(self) -> int:
        self._next_value += 1
        return self._next_value

    def event(self, process: str, kind: str, f: str, key: str, value: Any, error: str | None = None) -> None:
        row: dict[str, Any] = {"process": process, "type": kind, "f": f, "key": key, "value": value}
        row["time"] = time.monotonic_ns()
        if error is not None:
            row["error"] = error
        self.rows.append(row)
        if kind == "ok":
            self.ok_by_stage[self.stage].add(f)
            self.ok_count[self.stage] += 1

    @property
    def done(self) -> bool:
        return self.ok_count[STAGES[-1]] >= OPS_PER_STAGE


async def client_ops(client: AsyncClient, name: str, recorder: Recorder, rng: random.Random) -> None:
    """Random reads and writes through ``client`` until the nemesis is done; after an op of unknown outcome (info)
    the client goes on as a new process, as Jepsen's do (the old one may still be running it)."""
    generation = 0
    for _ in range(MAX_OPS_PER_CLIENT):
        if recorder.done:
            return
        process = f"{name}.{generation}"
        key = rng.choice(KEYS)
        value: int | None = recorder.value() if rng.random() < 0.5 else None
        f = "read" if value is None else "write"
        recorder.event(process, "invoke", f, key, value)
        try:
            if value is not None:
                await client.put_causal(key, str(value), w=2, consistency="linearizable")
                recorder.event(process, "ok", f, key, value)
            else:
                found = await client.get_siblings(key, r=2, consistency="linearizable")
                # ABD answers the register's value: one value, or none before the first write.
                assert len(found.values) <= 1, found
                recorder.event(process, "ok", f, key, int(found.values[0]) if found.values else None)
        except KvError as exc:
            kind = "fail" if exc.code.definite else "info"
            recorder.event(process, kind, f, key, value, exc.code.value)
            generation += kind == "info"


async def until_ok(recorder: Recorder, stage: str) -> None:
    """Until ``OPS_PER_STAGE`` ops succeeded in ``stage`` (cancelled if the clients ran out of ops first)."""
    while recorder.ok_count[stage] < OPS_PER_STAGE:
        await asyncio.sleep(0.005)


async def nemesis(cluster: LocalCluster, recorder: Recorder, victim: str) -> None:
    await until_ok(recorder, "before")
    await asyncio.to_thread(cluster.kill, victim)
    recorder.stage = "down"
    await until_ok(recorder, "down")
    await asyncio.to_thread(cluster.restart, victim)
    recorder.stage = "after"


async def load_with_a_crash(cluster: LocalCluster, victim: str) -> Recorder:
    """The clients' load with ``victim`` killed (SIGKILL) and restarted in the middle of it."""
    recorder, rng = Recorder(), random.Random(15)
    urls = [cluster.url(node_id) for node_id in cluster.config.node_ids for _ in range(CLIENTS_PER_NODE)]
    clients = [AsyncClient([url], route_by_map=False, timeout_s=CLIENT_TIMEOUT_S) for url in urls]
    try:
        crash = asyncio.create_task(nemesis(cluster, recorder, victim))
        await asyncio.gather(
            *(client_ops(c, f"c{i}", recorder, random.Random(rng.random())) for i, c in enumerate(clients))
        )
        # Clients that ran out of ops before the nemesis finished leave it waiting: the test then fails on done.
        if not crash.done():
            crash.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await crash
    finally:
        for client in clients:
            await client.close()
    return recorder


def test_linearizable_quorums_stay_linearizable_across_a_kill_and_restart(cluster: LocalCluster) -> None:
    recorder = asyncio.run(load_with_a_crash(cluster, "n2"))
    history = from_dicts(recorder.rows, "leaderless-kill")
    result = linearizable.check(history, time_limit_s=CHECK_TIME_LIMIT_S)
    assert result.valid is True, result
    # The load really ran around the crash: reads and writes succeeded before, while the victim was down, after.
    assert recorder.ok_by_stage == {name: {"read", "write"} for name in STAGES}
    assert recorder.done


def test_two_blind_writes_through_two_nodes_are_two_siblings(cluster: LocalCluster) -> None:
    async def run() -> tuple[tuple[bytes, ...], int]:
        first, second = (AsyncClient([cluster.url(n)], route_by_map=False) for n in ("n1", "n2"))
        try:
            await first.put_causal("doc", "from n1")
            await second.put_causal("doc", "from n2")
            found = await first.get_siblings("doc", r="all")
            resolved = await second.put_causal("doc", "merged", context=found.context, w="all")
            after = await first.get_siblings("doc", r="all")
            assert after.values == (b"merged",)
            return found.values, resolved.acks
        finally:
            await first.close()
            await second.close()

    values, acks = asyncio.run(run())
    assert sorted(values) == [b"from n1", b"from n2"]
    assert acks == 3
