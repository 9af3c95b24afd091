"""ABD linearizable registers over the harness, checked with the project's linearizability checker, against
plain R=W=1 quorums under the same kind of schedule (which can read stale values)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from leaderless_env import Cluster

from chaos.checkers import linearizable as lin
from chaos.history import from_dicts
from replication.dvv import Versions
from replication.leaderless import KeyRead, KeyStored, KeyValues, KeyWrite, LeaderlessSettings, QuorumFailed
from replication.leaderless_messages import KeyReadRequest, KeyWriteRequest
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3")


@dataclass
class Waiting:
    process: int
    node: str
    token: int
    f: str
    value: int | None


def register_value(state: Versions | None) -> int | None:
    """The register's value in a state: its sibling with the largest (counter, node), as ABD orders writes."""
    if state is None or not state.siblings:
        return None
    newest = max(state.siblings, key=lambda s: (s.dot[1], s.dot[0]))
    return None if newest.value is None else int(newest.value)


def run_history(seed: int, linearizable: bool, ops: int = 40, clients: int = 4) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    c = Cluster(NODES, LeaderlessSettings(replicas=3, sloppy=False, request_timeout_ms=300), rng=random.Random(seed))
    quorum = 2 if linearizable else 1
    process_of = list(range(clients))
    waiting: dict[int, Waiting] = {}
    rows: list[dict[str, Any]] = []
    issued = 0
    next_value = 1
    for _ in range(20_000):
        if issued >= ops and not waiting:
            break
        idle = [i for i in range(clients) if i not in waiting]
        choice = rng.random()
        if idle and issued < ops and choice < 0.2:
            client = rng.choice(idle)
            node = NODES[client % len(NODES)]
            issued += 1
            if rng.random() < 0.5:
                value: int | None = next_value
                next_value += 1
                op: KeyRead | KeyWrite = KeyWrite("x", str(value).encode(), VectorClock(), quorum, linearizable)
                f = "write"
            else:
                value, f = None, "read"
                op = KeyRead("x", quorum, linearizable)
            rows.append({"process": process_of[client], "type": "invoke", "f": f, "key": "x", "value": value})
            waiting[client] = Waiting(process_of[client], node, c.call(node, op), f, value)
        elif c.inflight and choice < 0.9:
            index = rng.randrange(len(c.inflight))
            fate = rng.random()
            if fate < 0.05:
                c.drop(index)
            else:
                if fate < 0.12:
                    c.duplicate(index)
                c.deliver(index)
        else:
            c.advance(rng.randint(1, 60))
        for client, w in list(waiting.items()):
            result = c.result(w.node, w.token)
            if result is None:
                continue
            del waiting[client]
            row: dict[str, Any] = {"process": w.process, "f": w.f, "key": "x", "value": w.value}
            if isinstance(result, KeyValues):
                row.update(type="ok", value=register_value(result.state))
            elif isinstance(result, KeyStored):
                row["type"] = "ok"
            else:
                assert isinstance(result, QuorumFailed), result
                row.update(type="fail" if result.definite else "info", error=result.reason)
                if not result.definite:
                    process_of[client] += clients  # an open op: the client goes on as a new process
            rows.append(row)
    assert not waiting, "every call must be answered by its timeout"
    return rows


def test_abd_registers_are_linearizable_under_reordering_drops_and_duplicates() -> None:
    for seed in range(12):
        rows = run_history(seed, linearizable=True)
        assert sum(1 for r in rows if r["type"] == "ok" and r["f"] == "read" and r["value"] is not None) > 0
        verdict = lin.check(from_dicts(rows), time_limit_s=10).valid
        assert verdict is True, (seed, rows)


def test_plain_r1_w1_reads_can_be_stale_under_the_same_schedules() -> None:
    verdicts = [lin.check(from_dicts(run_history(seed, linearizable=False)), time_limit_s=10).valid
                for seed in range(12)]
    assert False in verdicts


def test_abd_read_writes_the_newest_value_back_to_a_majority_before_answering() -> None:
    c = Cluster(NODES, LeaderlessSettings(replicas=3))
    c.write("n1", "x", b"1", w=1)
    c.write("n3", "x", b"2", w=1)
    c.inflight.clear()  # n1 holds one sibling, n3 the other, n2 nothing
    read = c.read("n1", "x", r=1, linearizable=True)
    assert [e.dst for e in c.inflight] == ["n2", "n3"]  # a majority is asked, whatever r says
    c.deliver(1)  # n3 gets the request
    c.deliver(1)  # n3's reply: a majority replied, and neither holds the merged state
    assert c.result("n1", read) is None
    assert c.stores["n1"].states["x"].values == (b"1", b"2")  # written back here first
    assert [(e.dst, type(e.body)) for e in c.inflight] == [
        ("n2", KeyReadRequest), ("n2", KeyWriteRequest), ("n3", KeyWriteRequest)]
    c.deliver(2)
    c.deliver(2)  # n3's ack: two of three hold the merged state
    result = c.result("n1", read)
    assert isinstance(result, KeyValues) and result.state is not None
    assert result.state.values == (b"2",)  # the register: the largest (counter, node)
    assert result.state.context == VectorClock.of({"n1": 1, "n3": 1})
    assert ("n1", read) in c.durable_answers


def test_abd_read_answers_at_once_when_a_majority_already_holds_the_state() -> None:
    c = Cluster(NODES, LeaderlessSettings(replicas=3))
    c.write("n1", "x", b"1", w=3)
    c.deliver_all()
    read = c.read("n2", "x", r=1, linearizable=True)
    c.deliver(0)
    c.deliver(1)  # n1's reply equals n2's own state
    result = c.result("n2", read)
    assert isinstance(result, KeyValues) and result.state is not None and result.state.values == (b"1",)
    assert not [e for e in c.inflight if isinstance(e.body, KeyWriteRequest)]


def test_abd_write_dots_above_every_counter_its_majority_saw() -> None:
    c = Cluster(NODES, LeaderlessSettings(replicas=3))
    for _ in range(3):
        c.write("n1", "x", b"a", w=3, linearizable=True)
        c.deliver_all()
    token = c.write("n3", "x", b"b", w=2, linearizable=True)
    c.deliver_all()
    result = c.result("n3", token)
    assert isinstance(result, KeyStored) and result.acks >= 2
    state = c.stores["n1"].states["x"]
    assert [s.dot for s in state.siblings] == [("n3", 4)] and state.values == (b"b",)
    assert c.replicas["n3"].partition_counter == 4


def test_abd_without_a_majority_is_unavailable_and_never_uses_fallbacks() -> None:
    c = Cluster((*NODES, "n4"), LeaderlessSettings(replicas=3))
    c.down |= {"n2", "n3"}
    c.write("n1", "y", b"v", w=1)  # suspects both
    c.sent.clear()
    token = c.write("n1", "x", b"v", w=1, linearizable=True)
    result = c.result("n1", token)
    assert isinstance(result, QuorumFailed) and result.reason == "unavailable" and result.definite
    assert "x" not in c.stores["n1"].states and not c.sent
