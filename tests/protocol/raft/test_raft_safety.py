"""Randomized safety of RaftReplica: seeded simulations of 3 and 5 replicas over a network that drops,
duplicates and reorders messages, under partitions and power crashes (a restart keeps only what was
synced), with clients writing and reading through whichever node they pick.

Checked after every event: election safety (one leader per term), leader completeness (a new leader holds
every entry anyone saw committed), commit agreement (no two nodes commit different entries at an index),
state machine safety (``RaftEnv`` asserts every apply against every other node's); periodically log
matching. With spares, the group's members change too: the leader is asked, now and then, to add a node as a
learner, promote a learner or remove a member (removed nodes may be added again later, with what they kept).
Client histories: every acknowledged write is the committed command at its version, a read
returns a committed write no older than any write acknowledged (or value read) before the read began;
after the faults end, every acknowledged write is still there on every node of the final group.

Two variants: with leases on, half the reads are ``lease`` reads and are held to the same check (the
simulation's clocks never drift apart, well within the drift bound); with some writes ``async``, those are
kept out of the history a read is judged by, and at the end the checker counts the acknowledged ones a
failover lost (their version holds another command, or none).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from raft_env import PARTITION, Options, RaftEnv

from kvstore.commands import PutCommand
from kvstore.errors import ErrorCode
from kvstore.messages import Failure, Found, GetOp, PutOp, Written
from replication.raft import LEADER
from replication.raft_membership import ADD_LEARNER, PROMOTE, REMOVE, ChangeReplicas

KEYS = ("a", "b", "c")


@dataclass
class Op:
    kind: str  # "put" | "get"
    key: str
    value: bytes
    invoked: int
    node: str
    setting: str  # the put's replication setting, the get's read mode


class SafetyRun:
    def __init__(
        self, seed: int, size: int, lease_reads: bool = False, async_writes: bool = False, spares: int = 0
    ) -> None:
        self.rng = random.Random(seed)
        ids = tuple(str(i) for i in range(1, size + 1))
        options = Options(voters=ids, election_timeout_ms=300, heartbeat_interval_ms=50, max_inflight_appends=3)
        options.max_append_bytes = 200  # several appends per catch-up
        if lease_reads:
            options.lease_drift_ms = 30
        self.lease_reads = lease_reads
        self.async_writes = async_writes
        self.env = RaftEnv(options, seed)
        # Nodes outside the group at first: each believes itself a learner of the founders' group until added.
        self.spares = spares
        for i in range(size + 1, size + spares + 1):
            self.env.add_node(str(i), ids)
        self.changes = 0
        self.now = 0
        self.seq = 0  # the order of client events: invocations and completions
        self.ops: dict[int, Op] = {}
        self.leader_of_term: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        # Per key: the highest version acknowledged (or read) so far, with the event number it happened at.
        self.seen: dict[str, list[tuple[int, int]]] = {k: [] for k in KEYS}
        self.acked: list[tuple[str, bytes, int]] = []
        self.acked_async: list[tuple[str, bytes, int]] = []
        # Reads answered in the step they arrived (lease reads served under a lease).
        self.immediate_reads = 0
        self.next_value = 0
        self.was_leader: dict[str, tuple[str, int]] = {}
        self.final_members: tuple[str, ...] = ()

    # ------------------------------------------------------------ events

    def sync_clocks(self) -> None:
        for node in self.env.nodes.values():
            node.clock = max(node.clock, self.now)

    def event(self) -> None:
        env, rng = self.env, self.rng
        self.sync_clocks()
        roll = rng.random()
        if roll < 0.55 and env.network:
            i = rng.randrange(len(env.network))  # any message in flight: reordering
            src, dst, body = env.network[i]
            if rng.random() >= 0.05:  # sometimes a duplicate stays behind
                del env.network[i]
            if not env.blocked(src, dst):
                env.deliver_one(src, dst, body)
        elif roll < 0.58 and env.network:
            del env.network[rng.randrange(len(env.network))]
        elif roll < 0.70:
            env.sync(rng.choice(list(env.nodes)))
        elif roll < 0.75:
            # Time passes mostly while the network is quiet: timeouts far longer than message delays.
            if len(env.network) < 3 or rng.random() < 0.2:
                self.fire_next_timer()
        elif roll < 0.83:
            self.put(self.pick_node(), rng.choice(KEYS))
        elif roll < 0.90:
            self.get(self.pick_reader(), rng.choice(KEYS))
        elif roll < 0.91:
            nodes = list(env.nodes)
            rng.shuffle(nodes)
            cut = rng.randrange(1, len(nodes))
            env.groups = {n: (0 if i < cut else 1) for i, n in enumerate(nodes)}
        elif roll < 0.94:
            # With leases on, partitions last long enough for the majority side to elect a new leader and
            # commit while the cut-off one may still believe it leads.
            if not self.lease_reads or rng.random() < 0.1:
                env.groups = {}
        elif roll < 0.955:
            env.crash(rng.choice(list(env.nodes)))
        elif roll < 0.97 and self.spares:
            self.change_members()
        if self.lease_reads and len(env.leaders()) > 1 and rng.random() < 0.3:
            self.get(self.pick_reader(), rng.choice(KEYS))  # a client that keeps reading from a deposed leader
        self.collect()
        self.check()
        env.out.clear()

    def pick_node(self) -> str:
        # Mostly the leader a random node names, as a node forwards a redirected op; sometimes anyone.
        node_id = self.rng.choice(list(self.env.nodes))
        hint = self.env.nodes[node_id].replica.leader
        return hint if hint is not None and self.rng.random() < 0.8 else node_id

    def pick_reader(self) -> str:
        # With leases on, reads go to a deposed leader that still believes it leads whenever there is one (a
        # lease held too long answers stale then, and the checker must see it), often to the leader otherwise.
        if not self.lease_reads:
            return self.pick_node()
        leaders = self.env.leaders()
        if len(leaders) > 1:
            return min(leaders, key=lambda n: self.env.nodes[n].replica.term)
        return leaders[0] if leaders and self.rng.random() < 0.5 else self.pick_node()

    def fire_next_timer(self) -> None:
        env = self.env
        due = [(at, n, key) for n, node in env.nodes.items() for key, at in node.timers.items()]
        if not due:
            return
        at, node_id, key = min(due)
        self.now = max(self.now, at)
        self.sync_clocks()
        env.fire(node_id, key)

    def change_members(self) -> None:
        """Ask the leader of the highest term for one change of its group (it may refuse: one at a time)."""
        leaders = self.env.leaders()
        if not leaders:
            return
        leader = max(leaders, key=lambda n: self.env.nodes[n].replica.term)
        config = self.env.nodes[leader].replica.config
        choices = [ChangeReplicas(ADD_LEARNER, n) for n in self.env.nodes if n not in config.members]
        choices += [ChangeReplicas(PROMOTE, n) for n in config.learners]
        choices += [ChangeReplicas(REMOVE, n) for n in config.learners]
        if len(config.voters) > 2:
            choices += [ChangeReplicas(REMOVE, n) for n in config.voters]
        if choices:
            self.env.call(leader, self.rng.choice(choices))
            self.changes += 1

    def put(self, node_id: str, key: str) -> None:
        self.next_value += 1
        value = f"v{self.next_value}".encode()
        self.seq += 1
        setting = "async" if self.async_writes and self.rng.random() < 0.5 else "sync"
        token = self.env.call(node_id, PutOp(key, value), replication=setting)
        self.ops[token] = Op("put", key, value, self.seq, node_id, setting)

    def get(self, node_id: str, key: str) -> None:
        self.seq += 1
        mode = "lease" if self.lease_reads and self.rng.random() < 0.5 else "read-index"
        token = self.env.call(node_id, GetOp(key), read=mode)
        self.ops[token] = Op("get", key, b"", self.seq, node_id, mode)
        if token in self.env.answers:
            self.immediate_reads += 1

    # ------------------------------------------------------------ checks

    def collect(self) -> None:
        """Judge every answer that reached its client."""
        answers = self.env.answers
        for token in list(answers):
            result = answers.pop(token)
            op = self.ops.pop(token, None)
            if op is None:
                continue
            self.seq += 1
            if op.kind == "put" and isinstance(result, Written) and op.setting == "async":
                # Acknowledged before it committed: a failover may lose it (counted at the end).
                self.acked_async.append((op.key, op.value, result.version))
            elif op.kind == "put" and isinstance(result, Written):
                command = self.env.applied_everywhere.get(result.version)
                assert isinstance(command, PutCommand) and (command.key, command.value) == (op.key, op.value), (
                    f"write {op} acknowledged at version {result.version}, which holds {command!r}"
                )
                self.acked.append((op.key, op.value, result.version))
                self.seen[op.key].append((self.seq, result.version))
            elif op.kind == "get" and isinstance(result, Found):
                command = self.env.applied_everywhere.get(result.version)
                assert isinstance(command, PutCommand) and (command.key, command.value) == (op.key, result.value), (
                    f"read {op} saw {result}, but version {result.version} holds {command!r}"
                )
                floor = max((v for at, v in self.seen[op.key] if at < op.invoked), default=0)
                assert result.version >= floor, f"stale read {op}: {result}, version {floor} was known before"
                self.seen[op.key].append((self.seq, result.version))
            elif op.kind == "get" and isinstance(result, Failure) and result.code == ErrorCode.NOT_FOUND.value:
                before = [v for at, v in self.seen[op.key] if at < op.invoked]
                assert not before, f"read {op} found nothing, but versions {before} were known before it began"

    def check(self) -> None:
        env = self.env
        for node_id, node in env.nodes.items():
            r = node.replica
            if r.role == LEADER:
                holder = self.leader_of_term.setdefault(r.term, node_id)
                assert holder == node_id, f"two leaders in term {r.term}: {holder} and {node_id}"
                if self.was_leader.get(node_id) != (LEADER, r.term):
                    # Leader completeness: a new leader holds every entry anyone saw committed.
                    log = node.storage.log(PARTITION)
                    for index, (term, _) in self.committed.items():
                        if index > log.bounds().snapshot_index:
                            assert log.term_at(index) == term, f"leader {node_id} of {r.term} lacks entry {index}"
            self.was_leader[node_id] = (r.role, r.term)
            log = node.storage.log(PARTITION)
            first = max(log.bounds().first_index, r.commit - 20)
            for entry in log.entries(first, r.commit + 1, 1 << 30) if r.commit >= first else []:
                known = self.committed.setdefault(entry.index, (entry.term, entry.data))
                assert known == (entry.term, entry.data), f"{node_id} committed another entry at {entry.index}"

    def check_log_matching(self) -> None:
        logs = {n: node.storage.log(PARTITION) for n, node in self.env.nodes.items()}
        ids = sorted(logs)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                la, lb = logs[a], logs[b]
                lo = max(la.bounds().first_index, lb.bounds().first_index)
                hi = min(la.bounds().last_index, lb.bounds().last_index)
                top = next((x for x in range(hi, lo - 1, -1) if la.term_at(x) == lb.term_at(x)), None)
                if top is None:
                    continue
                ea = la.entries(lo, top + 1, 1 << 30)
                eb = lb.entries(lo, top + 1, 1 << 30)
                assert ea == eb, f"logs of {a} and {b} agree on the term at {top} but differ before it"

    def lost_async_writes(self) -> int:
        """Acknowledged async writes whose version holds another command (or none) once everything settled."""
        lost = 0
        for key, value, version in self.acked_async:
            command = self.env.applied_everywhere.get(version)
            if not (isinstance(command, PutCommand) and (command.key, command.value) == (key, value)):
                lost += 1
        return lost

    # ------------------------------------------------------------ the end

    def settle(self) -> None:
        """No more faults: everything heals, a leader commits a last write, every node applies it."""
        env = self.env
        env.groups = {}
        for _ in range(20_000):
            self.sync_clocks()
            for node_id in env.nodes:
                if env.needs_sync(node_id):
                    env.sync(node_id)
            if env.network:
                env.deliver()
            else:
                self.fire_next_timer()
            self.collect()
            self.check()
            env.out.clear()
            leaders = env.leaders()
            if leaders and not env.network:
                leader = env.nodes[max(leaders, key=lambda n: env.nodes[n].replica.term)]
                r = leader.replica
                if leader.storage.log(PARTITION).term_at(r.commit) == r.term and all(
                    env.nodes[n].replica.applied == r.commit for n in r.config.members
                ):
                    self.final_members = r.config.members
                    return
        raise AssertionError("the cluster did not settle once the faults ended")

    def check_final(self) -> None:
        self.check_log_matching()
        for node_id in self.final_members:
            node = self.env.nodes[node_id]
            for key in KEYS:
                versions = [v for k, _, v in self.acked if k == key]
                record = node.storage.get_stored(PARTITION, key)
                if versions:
                    assert record is not None and record.version >= max(versions), (
                        f"{node_id} lost an acknowledged write of {key}: holds {record}, acked {max(versions)}"
                    )


def _run(
    seed: int, size: int, events: int, lease_reads: bool = False, async_writes: bool = False, spares: int = 0
) -> SafetyRun:
    run = SafetyRun(seed, size, lease_reads, async_writes, spares)
    for i in range(events):
        run.event()
        if i % 100 == 0:
            run.check_log_matching()
    run.settle()
    run.check_final()
    return run


@pytest.mark.parametrize("seed", range(30))
def test_three_replicas_stay_safe(seed: int) -> None:
    run = _run(seed, 3, 4000)
    assert run.leader_of_term, "no leader was ever elected"


@pytest.mark.parametrize("seed", range(15))
def test_five_replicas_stay_safe(seed: int) -> None:
    run = _run(seed, 5, 4000)
    assert run.leader_of_term, "no leader was ever elected"


@pytest.mark.parametrize("seed", range(20))
def test_a_group_whose_members_change_stays_safe(seed: int) -> None:
    run = _run(seed, 3, 4000, spares=2)
    assert run.leader_of_term, "no leader was ever elected"
    # Not vacuous: changes were applied (the configuration's index is the last applied change's).
    assert max(node.replica.config.index for node in run.env.nodes.values()) > 0


def test_the_simulation_commits_and_answers_writes() -> None:
    """Not vacuous: across seeds, writes are acknowledged and reads find them."""
    acked = found = 0
    for seed in range(3):
        run = _run(100 + seed, 3, 4000)
        acked += len(run.acked)
        found += sum(1 for k in KEYS for _ in run.seen[k])
    assert acked > 100 and found > acked


@pytest.mark.parametrize("seed", range(30))
def test_lease_reads_stay_linearizable(seed: int) -> None:
    run = _run(200 + seed, 3 if seed % 3 else 5, 4000, lease_reads=True)
    assert run.leader_of_term, "no leader was ever elected"


def test_lease_reads_are_served_without_a_round() -> None:
    """Not vacuous: across seeds, many lease reads were answered at once, and found what was written."""
    immediate = found = 0
    for seed in range(3):
        run = _run(300 + seed, 3, 4000, lease_reads=True)
        immediate += run.immediate_reads
        found += sum(1 for k in KEYS for _ in run.seen[k])
    assert immediate > 50 and found > 100


def test_async_writes_acknowledged_can_be_lost_by_a_failover() -> None:
    """The point of async: across seeds the checker finds acknowledged writes that a failover lost, while
    every sync write acknowledged in the same runs survives (``check_final``)."""
    acked = lost = 0
    for seed in range(10):
        run = _run(400 + seed, 3, 4000, async_writes=True)
        acked += len(run.acked_async)
        lost += run.lost_async_writes()
    assert acked > 100
    assert lost > 0
