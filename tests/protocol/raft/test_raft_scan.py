"""ScanRead: a partition scan a RaftReplica serves like a read, once a read-index round confirmed it leads."""

from __future__ import annotations

from raft_env import Options, RaftEnv
from test_raft_sweep import stabilize

from kvstore.messages import PutOp, ScanPage, Written
from replication.raft_messages import ScanRead
from replication.replica import Redirect


def elected() -> RaftEnv:
    env = RaftEnv(Options(voters=("1", "2", "3")))
    node = env.nodes["1"]
    env.apply_effects(node, lambda: node.replica.campaign(node.clock))
    stabilize(env)
    assert env.leaders() == ["1"]
    return env


def keys(result: object) -> list[str]:
    assert isinstance(result, ScanPage), result
    return [item.key for item in result.items]


def test_a_scan_waits_for_a_confirmed_round_and_sees_every_committed_write() -> None:
    env = elected()
    for key in ("a", "b", "c"):
        token = env.call("1", PutOp(key, b"v"))
        stabilize(env)
        assert isinstance(env.answers[token], Written)
    token = env.call("1", ScanRead("", None, 10))
    assert token not in env.answers  # a round of heartbeats first
    stabilize(env)
    assert keys(env.answers[token]) == ["a", "b", "c"]
    token = env.call("1", ScanRead("b", None, 1))
    stabilize(env)
    page = env.answers[token]
    assert keys(page) == ["b"] and isinstance(page, ScanPage) and page.truncated


def test_a_follower_redirects_and_a_cut_off_leader_never_serves_then_redirects_when_deposed() -> None:
    env = elected()
    token = env.call("2", ScanRead("", None, 10))
    assert env.answers[token] == Redirect("not_leader", "1")
    env.groups = {"1": 0, "2": 1, "3": 1}
    token = env.call("1", ScanRead("", None, 10))
    stabilize(env)
    for _ in range(5):
        env.tick_heartbeat("1")
        stabilize(env)
    assert token not in env.answers
    # Check-quorum deposes it: the scan it accepted is answered with a redirect, never with its records.
    for _ in range(30):
        if token in env.answers:
            break
        env.tick_heartbeat("1")
        stabilize(env)
    assert isinstance(env.answers[token], Redirect)
