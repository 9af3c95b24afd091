"""Data-driven interaction tests of RaftReplica, in the style of etcd-io/raft's ``testdata/*.txt``.

Each file under ``testdata/`` is a sequence of blocks::

    # comments
    command args
    ----
    expected output (no blank lines)

separated by blank lines. Set ``RAFT_REWRITE=1`` to rewrite every file's expected output with what the
replicas do now (then read the diff). Commands (node ids are strings such as ``1``):

- ``add-nodes N voters=(1,2,3) [learners=(4)] [pre-vote=false] [check-quorum=false] [inflight=K]
  [compact=K] [max-append-bytes=K] [lease-drift=MS] [max-proposals=K] [max-reads=K] [positions=true]``: a new
  group (N names every node, voters and learners; ``positions=true`` shows each answer's position and
  durable mark);
- ``campaign 1``; ``tick-election 1``; ``tick-heartbeat 1 [times]`` (each moves only that node's clock);
  ``advance-clock 1 MS`` (moves node 1's clock, fires nothing);
- ``propose 1 put k v [replication=async]`` / ``propose 1 del k``; ``read 1 k [mode=lease]
  [max-staleness=MS] [min-index=N]``; ``transfer-leader 1 2``;
- ``change 1 add_learner|promote|remove 4``: propose a configuration change at 1;
  ``boot 4 voters=(1,2,3)``: a new node with an empty log, a learner of the group it believes has those voters;
  ``config [1 ...]``: each node's configuration (voters, learners, the index of the change that made it);
- ``deliver-msgs [1 2 ...]``: every message in flight to those nodes (to all without arguments);
  ``drop-msgs [1 ...]``: lose them instead;
- ``process-ready [1 ...]``: sync the node's storage (held durable messages and answers leave), step ``Synced``;
- ``stabilize``: process-ready and deliver everything until nothing moves;
- ``partition 1 2 / 3`` (groups that cannot talk to each other; one group isolates it from the rest), ``heal``;
- ``crash 2``: power loss and restart from what was synced;
- ``install-snapshot 3 from=1``: what the nodes' snapshot transfer does, by hand: 3 takes 1's records as of
  ``snapshot_point()`` if 1 leads its term and it needs them (``SnapshotInstalled``), and 1 is told
  (``snapshot_sent``);
- ``status [1 ...]``, ``log 1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from raft_env import PARTITION, Options, RaftEnv, describe_entry

from kvstore.messages import DeleteOp, GetOp, PutOp
from replication.raft import LEADER
from replication.raft_membership import ChangeReplicas
from replication.raft_messages import TransferLeader
from replication.replica import SnapshotInstalled

TESTDATA = Path(__file__).resolve().parent / "testdata"
REWRITE = os.environ.get("RAFT_REWRITE") == "1"


def _parse(text: str) -> list[tuple[list[str], str, list[str]]]:
    """Blocks of (comment lines, command, expected output lines)."""
    blocks: list[tuple[list[str], str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        comments: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
            comments.append(lines[i])
            i += 1
        if i >= len(lines):
            break
        command = lines[i]
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"line {i + 1}: expected ---- after {command!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append((comments, command, expected))
    return blocks


def _ids(text: str) -> tuple[str, ...]:
    match = re.fullmatch(r"\((.*)\)", text)
    if match is None:
        raise ValueError(f"expected (a,b,...), got {text!r}")
    return tuple(x.strip() for x in match.group(1).split(",") if x.strip())


class Runner:
    def __init__(self) -> None:
        self.env: RaftEnv | None = None

    @property
    def e(self) -> RaftEnv:
        assert self.env is not None, "add-nodes first"
        return self.env

    def run(self, command: str) -> list[str]:
        words = command.split()
        name, args = words[0], words[1:]
        if name == "add-nodes":
            self._add_nodes(args)
            return ["ok"]
        env = self.e
        env.out = []
        if name == "campaign":
            node = env.nodes[args[0]]
            env.apply_effects(node, lambda: node.replica.campaign(node.clock))
        elif name == "tick-election":
            env.tick_election(args[0])
        elif name == "tick-heartbeat":
            for _ in range(int(args[1]) if len(args) > 1 else 1):
                env.tick_heartbeat(args[0])
        elif name == "advance-clock":
            env.nodes[args[0]].clock += int(args[1])
        elif name == "propose":
            plain = [a for a in args if "=" not in a]
            settings = dict(a.split("=", 1) for a in args if "=" in a)
            op = PutOp(plain[2], plain[3].encode()) if plain[1] == "put" else DeleteOp(plain[2])
            env.call(plain[0], op, replication=settings.pop("replication", "sync"))
            if settings:
                raise ValueError(f"unknown propose settings {settings}")
        elif name == "read":
            settings = dict(a.split("=", 1) for a in args[2:])
            staleness = settings.pop("max-staleness", None)
            env.call(
                args[0],
                GetOp(args[1]),
                read=settings.pop("mode", "read-index"),
                max_staleness_ms=None if staleness is None else int(staleness),
                min_index=int(settings.pop("min-index", "0")),
            )
            if settings:
                raise ValueError(f"unknown read settings {settings}")
        elif name == "transfer-leader":
            env.call(args[0], TransferLeader(args[1]))
        elif name == "change":
            env.call(args[0], ChangeReplicas(args[1], args[2]))
        elif name == "boot":
            env.add_node(args[0], _ids(args[1].removeprefix("voters=")))
        elif name == "config":
            for node_id in args or list(env.nodes):
                c = env.nodes[node_id].replica.config
                env.out.append(f"{node_id}: voters=({','.join(c.voters)}) learners=({','.join(c.learners)})@{c.index}")
        elif name == "deliver-msgs":
            targets: list[str | None] = [*args] if args else [None]
            for dst in targets:
                env.deliver(dst)
        elif name == "drop-msgs":
            dropped = [m for m in env.network if not args or m[1] in args]
            env.network = [m for m in env.network if m not in dropped]
            env.out.append(f"dropped {len(dropped)} messages")
        elif name == "process-ready":
            for node_id in args or list(env.nodes):
                env.sync(node_id)
        elif name == "stabilize":
            self._stabilize()
        elif name == "partition":
            groups = " ".join(args).split("/")
            env.groups = {}
            for number, group in enumerate(groups):
                for node_id in group.split():
                    env.groups[node_id] = number
            if len(groups) == 1:  # the others form the second group
                for node_id in env.nodes:
                    env.groups.setdefault(node_id, 1)
        elif name == "heal":
            env.groups = {}
        elif name == "install-snapshot":
            self._install_snapshot(args[0], args[1].removeprefix("from="))
        elif name == "crash":
            env.crash(args[0])
        elif name == "status":
            for node_id in args or list(env.nodes):
                self._status(node_id)
        elif name == "log":
            log = env.nodes[args[0]].storage.log(0)
            bounds = log.bounds()
            env.out.append(f"snapshot {bounds.snapshot_index}/{bounds.snapshot_term}")
            for entry in log.entries(bounds.first_index, bounds.last_index + 1, 1 << 30):
                env.out.append(f"{entry.index}/{entry.term} {describe_entry(entry.data)}")
        else:
            raise ValueError(f"unknown command {name!r}")
        return env.out or ["ok"]

    def _add_nodes(self, args: list[str]) -> None:
        kv = dict(a.split("=", 1) for a in args[1:])
        options = Options(voters=_ids(kv.pop("voters")))
        if "learners" in kv:
            options.learners = _ids(kv.pop("learners"))
        options.pre_vote = kv.pop("pre-vote", "true") == "true"
        options.check_quorum = kv.pop("check-quorum", "true") == "true"
        options.max_inflight_appends = int(kv.pop("inflight", "4"))
        options.compact_threshold = int(kv.pop("compact", "10000"))
        options.max_append_bytes = int(kv.pop("max-append-bytes", str(1 << 20)))
        drift = kv.pop("lease-drift", None)
        options.lease_drift_ms = None if drift is None else int(drift)
        options.max_pending_proposals = int(kv.pop("max-proposals", "4096"))
        options.max_pending_reads = int(kv.pop("max-reads", "4096"))
        options.positions = kv.pop("positions", "false") == "true"
        if kv:
            raise ValueError(f"unknown add-nodes options {kv}")
        if int(args[0]) != len(options.voters) + len(options.learners):
            raise ValueError("add-nodes N must count every voter and learner")
        self.env = RaftEnv(options)

    def _install_snapshot(self, follower_id: str, leader_id: str) -> None:
        """What the nodes' snapshot transfer does, by hand: the follower takes the leader's records as of its
        snapshot point if the leader leads its term and it needs them, and the leader is told it was sent."""
        env = self.e
        leader, follower = env.nodes[leader_id], env.nodes[follower_id]
        index, term, config = leader.replica.snapshot_point()
        source = follower.replica.snapshot_source(leader_id, leader.replica.term)
        needed = follower.replica.snapshot_needed(index, term)
        env.out.append(f"snapshot {index}/{term} from {leader_id}: source={source} needed={needed}")
        if not (source and needed):
            return
        storage = follower.storage
        for key, _ in storage.copy_of(PARTITION):
            storage.remove(PARTITION, key)
        for key, record in leader.storage.copy_of(PARTITION):
            storage.write(PARTITION, key, record)
        storage.log(PARTITION).install_snapshot(index, term)
        env.step(follower, SnapshotInstalled(index, term, config))
        env.apply_effects(leader, lambda: leader.replica.snapshot_sent(leader.clock, follower_id, index))

    def _stabilize(self) -> None:
        env = self.e
        for _ in range(100):
            moved = False
            for node_id in env.nodes:
                if env.needs_sync(node_id):
                    env.out.append(f"> {node_id} synced")
                    env.sync(node_id)
                    moved = True
            if env.network:
                env.deliver()
                moved = True
            if not moved:
                return
        raise AssertionError("stabilize did not settle")

    def _status(self, node_id: str) -> None:
        env = self.e
        replica = env.nodes[node_id].replica
        s = replica.status()
        env.out.append(
            f"{node_id}: {s['role']} term={s['term']} vote={s['vote']} leader={s['leader']} "
            f"commit={s['commit']} applied={s['applied']} log={s['first']}..{s['last']}"
        )
        if replica.role == LEADER:
            for peer, pr in replica.progress.items():
                env.out.append(
                    f"  {peer}: {pr.state} match={pr.match} next={pr.next} inflight={len(pr.inflight)}"
                    + (f" needs-snapshot={pr.pending_snapshot}" if pr.state == "snapshot" else "")
                )


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_interaction(path: Path) -> None:
    blocks = _parse(path.read_text())
    runner = Runner()
    rewritten: list[str] = []
    failures: list[str] = []
    for comments, command, expected in blocks:
        actual = runner.run(command)
        rewritten.extend([*comments, command, "----", *actual])
        if actual != expected:
            failures.append(
                f"{path.name}: {command}\n--- expected\n" + "\n".join(expected) + "\n--- actual\n" + "\n".join(actual)
            )
    if REWRITE:
        path.write_text("\n".join(rewritten).strip("\n") + "\n")
        return
    assert not failures, "\n\n".join(failures[:3])


def test_parse_keeps_comments_and_blocks() -> None:
    blocks = _parse("# c\nstatus\n----\nok\n\nlog 1\n----\nx\ny\n")
    assert blocks == [(["# c"], "status", ["ok"]), ([""], "log 1", ["x", "y"])]


def test_snapshot_hook_names_the_follower_and_resumes_after_the_node_sent_a_snapshot() -> None:
    runner = Runner()
    for _, command, _ in _parse((TESTDATA / "snapshot_hook.txt").read_text()):
        runner.run(command)
    env = runner.e
    leader = env.nodes["1"].replica
    assert leader.followers_needing_snapshot() == {"3": 4}
    env.out = []
    env.apply_effects(env.nodes["1"], lambda: leader.snapshot_sent(env.nodes["1"].clock, "3", 4))
    assert leader.followers_needing_snapshot() == {}
    assert env.out == ["1->3 App term=1 prev=4/1 commit=4 entries=[]"]


def test_hostile_peer_bodies_are_ignored() -> None:
    from replication.raft_messages import AppendEntries, AppendReply, Heartbeat, RequestVote, VoteReply
    from replication.replica import LogEntry, PeerMessage

    runner = Runner()
    for command in ("add-nodes 3 voters=(1,2,3)", "campaign 1", "stabilize"):
        runner.run(command)
    env = runner.e
    bodies: list[object] = [
        AppendEntries(1, 1, 1, (LogEntry(3, 1, b""),), 1),  # a gap
        AppendEntries(1, 1, 1, (LogEntry(2, 9, b""),), 1),  # an entry of a future term
        AppendEntries(1, 1, 1, (LogEntry(2, 1, b"\x07junk"),), 1),  # an unknown entry kind
        AppendEntries(1, 1, 1, (LogEntry(2, 1, b"\x02\x09x"),), 1),  # a configuration change of no known kind
        AppendEntries(1, 1, 1, (LogEntry(2, 1, b"\x02\x00"),), 1),  # one that names no node
        AppendEntries(1, 1, 1, (LogEntry(2, 1, b"\x02\x00\xff"),), 1),  # a node id that is not UTF-8
        AppendEntries(-1, 0, 0, (), 0),
        AppendEntries(1, 0, 0, ("x",), 0),  # type: ignore[arg-type]
        AppendReply(1, True, 10**6),
        AppendReply(True, True, 1),
        Heartbeat(1, 2**64, 0),
        Heartbeat(1, 1, 0, -1),  # a negative leader commit
        RequestVote(1, -5, 0),
        VoteReply("1", True),  # type: ignore[arg-type]
        "not a message",
        None,
    ]
    before = {n: node.replica.status() for n, node in env.nodes.items()}
    for body in bodies:
        for dst in ("1", "2"):
            for src in ("1", "2", "3", "stranger"):
                env.step(env.nodes[dst], PeerMessage(src, body))
    assert {n: node.replica.status() for n, node in env.nodes.items()} == before


def test_calls_naming_settings_no_replica_can_honour_are_refused_on_every_role() -> None:
    from replication.raft_messages import RaftRefused
    from replication.replica import Answer, ClientCall

    runner = Runner()
    for command in ("add-nodes 3 voters=(1,2,3)", "campaign 1", "stabilize"):
        runner.run(command)
    env = runner.e
    calls = [
        ClientCall(1, PutOp("k", b"v"), replication="quorum"),
        ClientCall(2, PutOp("k", b"v"), replication=None),  # type: ignore[arg-type]
        ClientCall(3, GetOp("k"), read="linearizable"),
        ClientCall(4, GetOp("k"), read="stale", max_staleness_ms=-1),
        ClientCall(5, GetOp("k"), read="stale", max_staleness_ms=True),  # type: ignore[arg-type]
        ClientCall(6, GetOp("k"), min_index=-3),
        ClientCall(7, GetOp("k"), min_index="3"),  # type: ignore[arg-type]
        ClientCall(8, GetOp("k"), min_index=2**64),
    ]
    for node_id in ("1", "2"):
        node = env.nodes[node_id]
        for call in calls:
            effects = node.replica.step(node.clock, call)
            assert len(effects) == 1
            answer = effects[0]
            assert isinstance(answer, Answer) and answer.token == call.token
            assert isinstance(answer.result, RaftRefused) and answer.result.reason == "bad_request"
