"""Leaderless mode through real nodes: ABD registers (``consistency=linearizable``) stay linearizable under
reordering, drops and a power loss, clients at every node (the project's checker, seeded); CRDT keys (counter,
set, map) converge on every replica whoever coordinates; LWW keys keep one value."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from chaos.checkers import linearizable as lin
from chaos.history import from_dicts
from kvstore.errors import ErrorCode
from kvstore.messages import Failure, FoundSiblings, GetOp, PutOp, Stored
from tests.protocol.leaderless_node_net import LeaderlessNet, leaderless_config

KEY = "x"


@dataclass
class Waiting:
    process: int
    request_id: int
    f: str
    value: int | None


def abd_history(seed: int, ops: int = 30, clients: int = 4) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    net = LeaderlessNet(cfg=leaderless_config(request_timeout_ms=400), rng=random.Random(seed), reorder=True,
                        drop=0.05)
    nodes = list(net.cfg.node_ids)
    _, pref = net.placement(KEY)
    process_of = list(range(clients))
    waiting: dict[int, Waiting] = {}
    rows: list[dict[str, Any]] = []
    issued, next_value, crashed = 0, 1, False
    for _ in range(50_000):
        if issued >= ops and not waiting:
            break
        idle = [c for c in range(clients) if c not in waiting]
        choice = rng.random()
        if idle and issued < ops and choice < 0.15:
            client = rng.choice(idle)
            issued += 1
            value: int | None = None
            if rng.random() < 0.5:
                value, next_value = next_value, next_value + 1
                op: GetOp | PutOp = PutOp(KEY, str(value).encode(), consistency="linearizable")
            else:
                op = GetOp(KEY, consistency="linearizable")
            f = "write" if value is not None else "read"
            rows.append({"process": process_of[client], "type": "invoke", "f": f, "key": KEY, "value": value})
            waiting[client] = Waiting(process_of[client], net.submit(nodes[client % len(nodes)], op), f, value)
        elif not crashed and issued >= ops // 2:
            crashed = True
            victim = pref[seed % len(pref)]
            net.power_loss(victim)
            # Its clients' requests died with it: open ops, each client goes on as a new process.
            for client in [c for c in waiting if nodes[c % len(nodes)] == victim]:
                w = waiting.pop(client)
                rows.append({"process": w.process, "type": "info", "f": w.f, "key": KEY, "value": w.value})
                process_of[client] += clients
        elif net.queue and choice < 0.9:
            net.deliver_one()
        else:
            net.fire_next_timer()
        for client, w in list(waiting.items()):
            result = net.replies.pop(w.request_id, None)
            if result is None:
                continue
            del waiting[client]
            row: dict[str, Any] = {"process": w.process, "f": w.f, "key": KEY, "value": w.value}
            if isinstance(result, FoundSiblings):
                assert len(result.values) <= 1, result
                row.update(type="ok", value=int(result.values[0]) if result.values else None)
            elif isinstance(result, Stored):
                row["type"] = "ok"
            else:
                assert isinstance(result, Failure), result
                definite = ErrorCode(result.code).definite
                row.update(type="fail" if definite else "info", error=result.code)
                if not definite:
                    process_of[client] += clients
            rows.append(row)
    assert not waiting, "every op must be answered by its timeout"
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_abd_registers_through_nodes_are_linearizable_under_reordering_drops_and_a_power_loss(seed: int) -> None:
    rows = abd_history(seed)
    assert any(r["type"] == "ok" and r["f"] == "read" and r["value"] is not None for r in rows)
    assert lin.check(from_dicts(rows), time_limit_s=10).valid is True, rows


# ---------------------------------------------------------------- CRDT and LWW keys

POLICIES = (("c/", "counter"), ("s/", "set"), ("m/", "map"), ("l/", "lww"))


def crdt_net() -> LeaderlessNet:
    return LeaderlessNet(cfg=leaderless_config(policies=POLICIES, anti_entropy_interval_ms=1000))


def replicas_render_alike(net: LeaderlessNet, key: str) -> set[bytes]:
    """What a read at each replica alone (r=1, after quiet time) answers: one rendering if they converged."""
    _, pref = net.placement(key)
    seen = set()
    for node in pref:
        got = net.request(node, GetOp(key, r="1"))
        assert isinstance(got, FoundSiblings) and len(got.values) == 1, got
        seen.add(got.values[0])
    return seen


def test_a_counter_incremented_through_every_node_concurrently_converges_to_the_sum() -> None:
    net = crdt_net()
    key = "c/hits"
    ids = [net.submit(node, PutOp(key, json.dumps({"increment": i + 1}).encode()))
           for i, node in enumerate(net.cfg.node_ids)]
    net.run_for(3000)
    assert all(isinstance(net.replies[i], Stored) for i in ids)
    assert replicas_render_alike(net, key) == {b"10"}


def test_a_set_and_a_map_written_concurrently_converge_on_every_replica() -> None:
    net = crdt_net()
    ids = []
    for i, node in enumerate(net.cfg.node_ids):
        ids.append(net.submit(node, PutOp("s/tags", json.dumps({"add": [f"t{i}"]}).encode())))
        ids.append(net.submit(node, PutOp("m/doc", json.dumps({"set": {f"f{i}": str(i)}}).encode())))
    net.run_for(3000)
    assert all(isinstance(net.replies[i], Stored) for i in ids)
    (tags,) = replicas_render_alike(net, "s/tags")
    assert sorted(json.loads(tags)) == ["t0", "t1", "t2", "t3"]
    (doc,) = replicas_render_alike(net, "m/doc")
    assert json.loads(doc) == {"f0": "0", "f1": "1", "f2": "2", "f3": "3"}
    # A removal through one node reaches them all.
    assert isinstance(net.request("n2", PutOp("s/tags", json.dumps({"remove": ["t1"]}).encode())), Stored)
    net.run_for(3000)
    (tags,) = replicas_render_alike(net, "s/tags")
    assert sorted(json.loads(tags)) == ["t0", "t2", "t3"]


def test_concurrent_blind_writes_of_an_lww_key_keep_one_value_everywhere() -> None:
    net = crdt_net()
    key = "l/x"
    for node in net.cfg.node_ids:
        net.submit(node, PutOp(key, node.encode()))
    net.run_for(3000)
    assert all(isinstance(r, Stored) for r in net.replies.values())
    values = replicas_render_alike(net, key)
    assert len(values) == 1 and values <= {n.encode() for n in net.cfg.node_ids}
