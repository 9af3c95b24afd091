"""A Raft group's configuration (its voters and learners) and its single-step changes (etcd-io/raft's
``ConfChange``, one node at a time, never joint consensus).

A change is proposed as a log entry (``raft.ENTRY_CONF_CHANGE``) and takes effect on a replica when the
replica *applies* it, so every replica moves through the same configurations at the same log indexes. Since
one change at a time is in flight (a leader refuses another until the last is applied) and each adds or
removes one voter at most, any two majorities of consecutive configurations overlap.

- ``add_learner``: a new node that receives the log but neither votes towards a quorum nor campaigns;
- ``promote``: a learner becomes a voter (the leader allows it only once the learner holds its commit);
- ``remove``: a voter or learner leaves the group (a leader that removes itself steps down once it applied it).

The configuration in force survives restarts and log compaction: a replica keeps it in its hard state as of
the last change it applied (with that change's index), and replays only the changes after that index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ADD_LEARNER = "add_learner"
PROMOTE = "promote"
REMOVE = "remove"
ACTIONS = (ADD_LEARNER, PROMOTE, REMOVE)
MAX_NODE_ID_BYTES = 256
# A group is small; a bound keeps a hostile entry or hard state from growing one without limit.
MAX_MEMBERS = 64

_ACTION_CODES = {action: code for code, action in enumerate(ACTIONS)}
_COUNT = struct.Struct(">BB")  # voters, learners
_ID_LENGTH = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class ChangeReplicas:
    """The admin op (a ``ClientCall`` op at the leader) and the content of a config-change entry: ``action``
    one of ``ACTIONS`` on ``node``. Answered with the ``Configuration`` it made once applied, ``RaftRefused``
    (``bad_change``, ``change_pending``, ``not_caught_up``), or a ``Redirect``."""

    action: str
    node: str


@dataclass(frozen=True, slots=True)
class Configuration:
    """Who is in the group. ``index``: the log index of the change that made it (0: the group's first one)."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    index: int = 0

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.voters, *self.learners)

    def refusal(self, change: ChangeReplicas) -> str | None:
        """Why ``change`` cannot be made to this configuration (None: it can)."""
        node = change.node
        if change.action == ADD_LEARNER:
            if node in self.voters or node in self.learners:
                return f"{node} is already a member of the group"
            if len(self.voters) + len(self.learners) >= MAX_MEMBERS:
                return f"the group has {MAX_MEMBERS} members already"
            return None
        if change.action == PROMOTE:
            return None if node in self.learners else f"{node} is not a learner of the group"
        if node not in self.voters and node not in self.learners:
            return f"{node} is not a member of the group"
        if self.voters == (node,):
            return f"{node} is the group's last voter"
        return None

    def changed(self, change: ChangeReplicas, index: int) -> Configuration:
        """The configuration after ``change`` applied at ``index``. A change that does not fit (it cannot be
        proposed so, but a replica that started from a guessed configuration may replay one) keeps the members
        as they are: what the change wants them to be is what they become."""
        node = change.node
        voters = tuple(v for v in self.voters if v != node)
        learners = tuple(v for v in self.learners if v != node)
        if change.action == ADD_LEARNER:
            learners = (*learners, node) if node not in self.voters else learners
            voters = self.voters
        elif change.action == PROMOTE:
            voters = (*voters, node)
        if not voters:
            voters = self.voters  # a group never loses its last voter
        return Configuration(voters, learners, index)


def _well_formed_node(node: object) -> bool:
    return isinstance(node, str) and 0 < len(node.encode()) <= MAX_NODE_ID_BYTES


def well_formed_change(change: object) -> bool:
    return isinstance(change, ChangeReplicas) and change.action in ACTIONS and _well_formed_node(change.node)


def encode_change(change: ChangeReplicas) -> bytes:
    return bytes([_ACTION_CODES[change.action]]) + change.node.encode()


def decode_change(data: bytes) -> ChangeReplicas:
    """ValueError for bytes ``encode_change`` did not make."""
    if len(data) < 2 or data[0] >= len(ACTIONS):
        raise ValueError(f"not a configuration change: {data[:40]!r}")
    change = ChangeReplicas(ACTIONS[data[0]], data[1:].decode())
    if not well_formed_change(change):
        raise ValueError(f"not a configuration change: {data[:40]!r}")
    return change


def encode_configuration(config: Configuration) -> bytes:
    out = [struct.pack(">q", config.index), _COUNT.pack(len(config.voters), len(config.learners))]
    for node in config.members:
        raw = node.encode()
        out.append(_ID_LENGTH.pack(len(raw)) + raw)
    return b"".join(out)


def decode_configuration(data: bytes) -> Configuration:
    """ValueError for bytes ``encode_configuration`` did not make."""
    try:
        (index,) = struct.unpack_from(">q", data)
        n_voters, n_learners = _COUNT.unpack_from(data, 8)
        at = 8 + _COUNT.size
        nodes: list[str] = []
        for _ in range(n_voters + n_learners):
            (length,) = _ID_LENGTH.unpack_from(data, at)
            at += _ID_LENGTH.size
            if at + length > len(data):
                raise ValueError("truncated")
            nodes.append(data[at : at + length].decode())
            at += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a raft configuration: {exc}") from exc
    if at != len(data) or index < 0 or n_voters == 0 or len(set(nodes)) != len(nodes):
        raise ValueError("not a raft configuration")
    if not all(_well_formed_node(n) for n in nodes):
        raise ValueError("not a raft configuration: bad node id")
    return Configuration(tuple(nodes[:n_voters]), tuple(nodes[n_voters:]), index)
