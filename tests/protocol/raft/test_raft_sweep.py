"""The leader's replicated TTL sweep: a purge goes through the log, so every replica purges the same keys at
the same index, and a follower never purges on its own."""

from __future__ import annotations

from raft_env import PARTITION, Options, RaftEnv

from kvstore.commands import PurgeCommand
from kvstore.messages import PutOp, Written
from replication.raft import SWEEP_TIMER

SWEEP_MS = 500


def stabilize(env: RaftEnv) -> None:
    for _ in range(100):
        moved = 0
        for node_id in env.nodes:
            if env.needs_sync(node_id):
                env.sync(node_id)
                moved += 1
        moved += env.deliver()
        if not moved:
            return
    raise AssertionError("did not settle")


def elected(sweep_interval_ms: int | None = SWEEP_MS) -> RaftEnv:
    env = RaftEnv(Options(voters=("1", "2", "3"), sweep_interval_ms=sweep_interval_ms))
    node = env.nodes["1"]
    env.apply_effects(node, lambda: node.replica.campaign(node.clock))
    stabilize(env)
    assert env.leaders() == ["1"]
    return env


def stored_keys(env: RaftEnv, node_id: str) -> set[str]:
    storage = env.nodes[node_id].storage
    return {key for key in ("ttl", "keep") if storage.get_stored(PARTITION, key) is not None}


def test_only_the_leader_arms_the_sweep_and_its_purge_reaches_every_replica_through_the_log() -> None:
    env = elected()
    assert SWEEP_TIMER in env.nodes["1"].timers
    assert all(SWEEP_TIMER not in env.nodes[n].timers for n in ("2", "3"))
    ttl = env.call("1", PutOp("ttl", b"v", ttl_ms=100))
    keep = env.call("1", PutOp("keep", b"v"))
    stabilize(env)
    assert isinstance(env.answers[ttl], Written) and isinstance(env.answers[keep], Written)
    assert all(stored_keys(env, n) == {"ttl", "keep"} for n in env.nodes)
    # Followers past the expiry purge nothing of their own (they have no sweep timer to fire).
    for node_id in ("2", "3"):
        env.nodes[node_id].clock += 10_000
        assert not env.fire(node_id, SWEEP_TIMER)
        env.step(env.nodes[node_id], _timer(SWEEP_TIMER))  # even a stray timer purges nothing
    assert all(stored_keys(env, n) == {"ttl", "keep"} for n in env.nodes)
    # The leader's sweep proposes the purge; every replica applies it at the same index.
    assert env.fire("1", SWEEP_TIMER)
    assert SWEEP_TIMER in env.nodes["1"].timers  # re-armed
    stabilize(env)
    assert all(stored_keys(env, n) == {"keep"} for n in env.nodes)
    purges = [i for i, c in env.applied_everywhere.items() if isinstance(c, PurgeCommand)]
    assert len(purges) == 1
    assert all(isinstance(env.applied[n].get(purges[0]), PurgeCommand) for n in env.nodes)
    # Nothing expired any more: the next sweep proposes nothing.
    last = env.nodes["1"].replica.status()["last"]
    assert env.fire("1", SWEEP_TIMER)
    assert env.nodes["1"].replica.status()["last"] == last


def test_one_purge_at_a_time_and_a_deposed_leader_stops_sweeping() -> None:
    env = elected()
    env.call("1", PutOp("ttl", b"v", ttl_ms=100))
    stabilize(env)
    env.groups = {"1": 0, "2": 1, "3": 1}  # the leader is cut off: its purge cannot commit
    assert env.fire("1", SWEEP_TIMER)
    last = env.nodes["1"].replica.status()["last"]
    assert env.fire("1", SWEEP_TIMER)
    assert env.nodes["1"].replica.status()["last"] == last  # the first purge is not applied: no second one
    assert all(stored_keys(env, n) == {"ttl"} for n in env.nodes)
    # n2 takes over; the old leader learns of the new term and stops its sweep.
    env.deliver()
    env.nodes["3"].clock += 5000  # n3 no longer hears the old leader's lease
    env.tick_election("2")
    stabilize(env)
    env.groups = {}
    env.tick_heartbeat("2")
    stabilize(env)
    assert env.leaders() == ["2"]
    assert SWEEP_TIMER not in env.nodes["1"].timers and SWEEP_TIMER in env.nodes["2"].timers
    assert env.fire("2", SWEEP_TIMER)
    stabilize(env)
    assert all(stored_keys(env, n) == set() for n in env.nodes)


def test_no_sweep_without_an_interval() -> None:
    env = elected(sweep_interval_ms=None)
    assert all(SWEEP_TIMER not in node.timers for node in env.nodes.values())


def _timer(key: str) -> object:
    from replication.replica import TimerFired

    return TimerFired(key)
