"""Leaderless mode in the node: the replicas it runs, what it asks them, and what their answers mean to a client.

The protocol is ``replication/leaderless.py`` (one ``LeaderlessReplica`` per partition this node holds a copy
of). This module is the node's side of it:

- the replica of a partition: its preference list is the partition's replicas in the map (the founders' layout
  puts ``replicas`` copies of each, spread by ``partitioning.rebalance``), its fallbacks every other active
  member, in ring order after the partition's first replica, so that the fallbacks of one partition differ
  from node to node as Dynamo's walk along the ring makes them;
- the conflict policy of each key (``[leaderless.policies]``, longest prefix first), one object per policy;
- a client op as the call a replica takes (``KeyRead``/``KeyWrite``, quorums resolved against the cluster's
  ``[leaderless]`` defaults), and the replica's answer as the client's result: ``FoundSiblings`` (every live
  value and the context), ``Stored`` (the new context), or a ``Failure`` whose definiteness is the replica's.
"""

from __future__ import annotations

import random

from kvstore.config import ClusterConfig, resolve_quorum
from kvstore.errors import ErrorCode
from kvstore.messages import (
    DeleteOp,
    Failure,
    FoundSiblings,
    GetOp,
    KeyOp,
    PutOp,
    Result,
    ScanItem,
    ScanPage,
    Stored,
)
from kvstore.storage.base import Storage
from kvstore.version_store import KvVersionStore
from partitioning.partition_map import PartitionMap
from replication.conflict import ConflictPolicy, LastWriterWins, Siblings
from replication.dvv import Versions, decode_context, encode_context
from replication.leaderless import (
    KeyRead,
    KeyStored,
    KeyValues,
    KeyWrite,
    LeaderlessReplica,
    LeaderlessSettings,
    LocalScan,
    QuorumFailed,
)
from replication.replica import ClientCall

# The HTTP header that carries a key's causal context (base64) to a client and back with its next write.
CONTEXT_HEADER = "X-Kv-Context"
# What a replica's failed quorum becomes for the client: a refusal by the key's policy (too many siblings) is a
# conflict to resolve by reading first; the rest ask for a retry.
_FAILURE_CODES = {"timeout": ErrorCode.TIMEOUT, "unavailable": ErrorCode.UNAVAILABLE}


class LeaderlessMode:
    def __init__(self, node_id: str, config: ClusterConfig, storage: Storage, rng: random.Random) -> None:
        self._node_id = node_id
        self._storage = storage
        self._rng = rng
        self._replicas = config.replication_factor
        self._config = config.leaderless
        self.settings = LeaderlessSettings(
            replicas=self._replicas,
            sloppy=self._config.sloppy,
            request_timeout_ms=config.timeouts.request_timeout_ms,
            tombstone_grace_ms=self._config.tombstone_grace_ms,
        )
        self._policies: dict[str, ConflictPolicy] = {
            "siblings": Siblings(self._config.max_siblings),
            "lww": LastWriterWins(),
        }

    def policy_for(self, key: str) -> ConflictPolicy:
        return self._policies[self._config.policy_name(key)]

    # ------------------------------------------------------------ replicas

    def build_replica(self, partition: int, partition_map: PartitionMap) -> LeaderlessReplica:
        replica = LeaderlessReplica(
            partition,
            self._node_id,
            KvVersionStore(self._storage, partition),
            self._storage.log(partition),
            self.settings,
            self.policy_for,
            # A child draw per replica, in partition order: the simulator stays deterministic.
            incarnation=self._rng.getrandbits(63),
        )
        self.place(replica, partition, partition_map)
        return replica

    def place(self, replica: LeaderlessReplica, partition: int, partition_map: PartitionMap) -> None:
        replica.set_placement(*placement(partition_map, partition))

    # ------------------------------------------------------------ ops and results

    def call(self, token: int, op: KeyOp) -> ClientCall:
        """The replica's call for a client op (the node checked the op with ``check_op`` already)."""
        if isinstance(op, GetOp):
            r = resolve_quorum(op.r or self._config.r, self._replicas)
            read = KeyRead(op.key, r, op.consistency == "linearizable", op.repair or "async")
            return ClientCall(token, read)
        assert isinstance(op, (PutOp, DeleteOp)), "check_op refuses CAS in leaderless mode"
        w = resolve_quorum(op.w or self._config.w, self._replicas)
        value = op.value if isinstance(op, PutOp) else None
        write = KeyWrite(op.key, value, decode_context(op.context), w, op.consistency == "linearizable")
        return ClientCall(token, write)

    def result(self, op: KeyOp, answer: object) -> Result:
        """The client's result for the replica's ``answer`` to ``op``."""
        if isinstance(answer, KeyValues):
            return self._found(op.key, answer.state)
        if isinstance(answer, KeyStored):
            return Stored(op.key, encode_context(answer.state.context), answer.acks)
        if isinstance(answer, QuorumFailed):
            code = _FAILURE_CODES.get(answer.reason, ErrorCode.PRECONDITION_FAILED)
            if code is ErrorCode.TIMEOUT and answer.definite:
                code = ErrorCode.UNAVAILABLE  # nothing was stored: say so (a definite error), and retry
            return Failure.of(code, answer.message)
        return Failure.of(ErrorCode.INTERNAL, f"unexpected answer {type(answer).__name__}")

    @staticmethod
    def scan_page(scan: LocalScan) -> ScanPage:
        """A replica's own live keys as a scan page: one item per key, its first live value (a scan reads one
        replica per partition; a read of the key returns every sibling, from a quorum)."""
        items = tuple(ScanItem(key, state.values[0], 0) for key, state in scan.items if state.values)
        return ScanPage(items, scan.truncated)

    def _found(self, key: str, state: Versions | None) -> FoundSiblings:
        if state is None:
            return FoundSiblings(key, (), b"")
        return FoundSiblings(key, state.values, encode_context(state.context))


def placement(partition_map: PartitionMap, partition: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``partition``'s preference list (its replicas in the map) and its fallbacks: the other active members, in
    ring order (node ids sorted, wrapping) after its first replica."""
    preference = partition_map.replicas[partition]
    others = sorted(set(partition_map.active) - set(preference))
    first = preference[0]
    after = [n for n in others if n > first]
    return preference, (*after, *[n for n in others if n < first])

