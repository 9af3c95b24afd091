"""ClusterConfig: the cluster's members, mode, storage, limits and timeouts, loaded from TOML.

```toml
[cluster]
name = "demo"
secret = "change-me"          # shared secret that authenticates peer traffic (HMAC-SHA256)
mode = "single"               # replication mode: "single" = one copy per key (the foundation);
                              # "leader" = each partition a Raft group of `replicas` nodes
replicas = 3                  # leader mode: copies per partition (1..founders; default 3); single: 1 or absent
partitions = 64               # hash: the fixed partitions (vnodes) keys hash to; range: the slots ranges take
partitioner = "hash"          # "hash" (key hash mod partitions) or "range" (sorted key ranges that split and merge)
initial_nodes = ["n1", "n2"]  # who held the partitions when the cluster was made (default: every node);
                              # nodes added later join at run time (kvstore cluster add-node)

[nodes]                       # node id = "host:port"; one cluster can span machines
n1 = "127.0.0.1:7001"
n2 = "127.0.0.1:7002"

[ranges]                      # range mode only: a range splits past either split bound, neighbours merge
split_keys = 100000           # below both merge bounds (each at most half its split bound)
split_bytes = 67108864
merge_keys = 25000
merge_bytes = 16777216
check_interval_ms = 1000

[storage]
engine = "sqlite"             # "sqlite" (durable) or "memory"
fsync = "always"              # "always" | "batch" | "never"
batch_interval_ms = 10
data_dir = ".kvstore/data"    # each node keeps <data_dir>/<node id>/

[limits]
max_key_bytes = 1024
max_value_bytes = 1048576
max_client_connections = 1024 # past it only /peer, /health and /metrics are served (see README, Limits)
max_request_line_bytes = 8192 # longer request target: 414
max_header_bytes = 8190       # longest header line (name and value); longer: 431
max_headers = 100             # more: 431
raft_compact_entries = 10000  # leader mode: applied entries a Raft log keeps before it compacts

[timeouts]
request_timeout_ms = 2000
election_timeout_ms = 1000    # leader mode: a follower that hears no leader for 1-2x this campaigns
heartbeat_interval_ms = 100   # leader mode: how often a leader tells its followers it is alive
header_timeout_ms = 10000     # a request head not complete this long after it began: 408, closed
keepalive_idle_timeout_ms = 75000  # an idle keep-alive connection is closed after this
body_timeout_ms = 30000       # a request body not all received this long after its head: 408, closed

[replication]                 # leader mode only (single mode: leave out, or the defaults)
writes = "sync"               # when a write is acknowledged: "sync" (committed and applied), "semi-sync"
                              # (the leader and one follower hold it durably), "async" (the leader does)
reads = "read-index"          # how a GET is served: "read-index" | "lease" | "unsafe" | "stale"
lease_drift_ms = 100          # the clock-drift bound lease reads assume; below timeouts.election_timeout_ms
```

Requests may override `writes` (``?replication=``) and `reads` (``?consistency=``) one by one
(``kvstore/server/routes_kv.py``); ``ReplicationConfig.read_mode`` and ``write_mode`` resolve what an op names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import tomli_w

from kvstore.toml_file import read_toml
from partitioning.range_map import SplitPolicy
from replication.replica import READ_MODES, REPLICATION_SETTINGS

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
StorageEngine = Literal["sqlite", "memory"]
Mode = Literal["single", "leader", "leaderless"]
Partitioner = Literal["hash", "range"]
PARTITIONERS: tuple[str, ...] = ("hash", "range")

FSYNC_POLICIES: tuple[str, ...] = ("always", "batch", "never")
# Settings earlier versions read and this one ignores (with a warning), so that old files still load.
RETIRED_SETTINGS: dict[str, dict[str, str]] = {
    "storage": {
        "compact_after_writes": "the SQLite engine has kept no event log to fold since schema version 3",
    },
}
STORAGE_ENGINES: tuple[str, ...] = ("sqlite", "memory")
MODES: tuple[str, ...] = ("single", "leader", "leaderless")
# Copies per partition in leader and leaderless mode when the config does not say.
DEFAULT_LEADER_REPLICAS = 3
# What ``r`` and ``w`` may name besides a number of replicas (leaderless mode).
QUORUM_NAMES: tuple[str, ...] = ("one", "quorum", "all")
# Leaderless conflict policies a key prefix may name (replication/conflict.py, replication/crdt.py).
CONFLICT_POLICIES: tuple[str, ...] = ("siblings", "lww", "counter", "set", "map")
# The feature store's keys (kvstore/features/keys.py). Keys under EVENT_TIME_PREFIXES hold event-time rows
# (replication/event_time.py): only merges write them (``PutOp.merge``; in leaderless mode their conflict policy
# is ``event-time``, whatever ``[leaderless.policies]`` says). Clients do not write under RESERVED_PREFIX through
# the plain key routes.
RESERVED_PREFIX = "__fs/"
EVENT_TIME_PREFIXES: tuple[str, ...] = ("__fs/on/", "__fs/ev/", "__fs/wm/")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


_HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")


def _bracketed_ipv6(host: str) -> bool:
    if not (host.startswith("[") and host.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class NodeAddress:
    node_id: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def parse(node_id: str, address: str) -> NodeAddress:
        """``host:port``: a host name or IPv4 address (letters, digits, '.', '-', '_'), or an IPv6 address in
        brackets, and a port 1..65535 in ASCII digits. Anything else would make a URL that points elsewhere
        (``h/x:80``, ``x@y:80``) or none at all (``::1:80``)."""
        host, sep, port_text = address.rpartition(":")
        port_ok = port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536
        if not sep or not port_ok or not (_HOST_NAME.fullmatch(host) or _bracketed_ipv6(host)):
            raise ConfigError(f"nodes.{node_id}: expected 'host:port', got {address!r:.300}")
        return NodeAddress(node_id, host, int(port_text))


@dataclass(frozen=True)
class StorageConfig:
    engine: StorageEngine = "sqlite"
    fsync: FsyncPolicy = "always"
    batch_interval_ms: int = 10
    data_dir: str = ".kvstore/data"


@dataclass(frozen=True)
class RangesConfig:
    """Range mode's split and merge thresholds (``partitioning.range_map.SplitPolicy``) and how often an owner
    looks at its ranges."""

    split_keys: int = 100_000
    split_bytes: int = 64 << 20
    merge_keys: int = 25_000
    merge_bytes: int = 16 << 20
    check_interval_ms: int = 1000

    def policy(self) -> SplitPolicy:
        return SplitPolicy(self.split_keys, self.split_bytes, self.merge_keys, self.merge_bytes)


@dataclass(frozen=True)
class Limits:
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    # Requests a node holds open at once (its own clients' and forwarded ones); beyond it: overloaded.
    max_inflight: int = 10_000
    max_batch_keys: int = 1000
    max_scan_limit: int = 10_000
    # Peer messages queued for one peer before the transport refuses more.
    max_peer_queue: int = 10_000
    # Open HTTP connections served in full; past it (or near RLIMIT_NOFILE) a few more are admitted for
    # peer traffic and health checks only.
    max_client_connections: int = 1024
    # The longest request target (414 past it).
    max_request_line_bytes: int = 8192
    # The longest header line, name and value (Apache's LimitRequestFieldSize); 431 past it.
    max_header_bytes: int = 8190
    max_headers: int = 100
    # Leader mode: a replica compacts its Raft log once this many applied entries are held; a follower that
    # needs compacted entries is sent a snapshot (kvstore/raft_snapshots.py).
    raft_compact_entries: int = 10_000


@dataclass(frozen=True)
class Timeouts:
    request_timeout_ms: int = 2000
    peer_connect_timeout_ms: int = 500
    # How often expired TTL keys are purged from storage (reads hide them at once regardless).
    ttl_sweep_interval_ms: int = 1000
    # How often each member compares the layout with the balanced one and moves partitions it owns.
    rebalance_interval_ms: int = 1000
    # Leader mode (Raft): a follower that hears no leader for a random 1x..2x this campaigns; a leader
    # that hears from no quorum for this long steps down.
    election_timeout_ms: int = 1000
    # Leader mode: how often a leader sends heartbeats (must be below election_timeout_ms).
    heartbeat_interval_ms: int = 100
    # A request head (request line and headers) must be complete this long after its first byte, or
    # after the connection opened; a slow one is answered 408 and closed (slowloris).
    header_timeout_ms: int = 10_000
    # A keep-alive connection with no request for this long is closed. Longer than aiohttp's client
    # keep-alive (15 s), so clients, peers included, close first and never reuse a connection the
    # server is closing.
    keepalive_idle_timeout_ms: int = 75_000
    # A request body must be all received this long after its head was, or the request is answered
    # 408: a client that sends a few bytes of a body and stops must not hold a handler for ever.
    body_timeout_ms: int = 30_000


# What a GET may ask for (``GetOp.consistency``): a read mode, or "linearizable", the cluster's linearizable one.
CONSISTENCY_LEVELS: tuple[str, ...] = ("linearizable", *READ_MODES)
# The read modes that are linearizable; "linearizable" resolves to ``reads`` if it is one, else the first.
LINEARIZABLE_READS: tuple[str, ...] = ("read-index", "lease")


@dataclass(frozen=True)
class ReplicationConfig:
    """Leader mode's defaults for when writes are acknowledged and how reads are served
    (``replication.replica.REPLICATION_SETTINGS``, ``READ_MODES``), and the clock drift lease reads assume."""

    writes: str = "sync"
    reads: str = "read-index"
    lease_drift_ms: int = 100

    def read_mode(self, consistency: str) -> str:
        """The read mode a GET asking for ``consistency`` is served with ("": the cluster's ``reads``)."""
        if not consistency:
            return self.reads
        if consistency == "linearizable":
            return self.reads if self.reads in LINEARIZABLE_READS else LINEARIZABLE_READS[0]
        return consistency

    def write_mode(self, replication: str) -> str:
        """The replication setting a write asking for ``replication`` uses ("": the cluster's ``writes``)."""
        return replication or self.writes


def check_replication(settings: ReplicationConfig, mode: str, election_timeout_ms: int) -> None:
    """ConfigError unless ``settings`` are valid for a cluster in ``mode`` (chaos scenarios check theirs here too)."""
    if settings.writes not in REPLICATION_SETTINGS:
        raise ConfigError(f"replication.writes: {settings.writes!r:.40} is not one of {REPLICATION_SETTINGS}")
    if settings.reads not in READ_MODES:
        raise ConfigError(f"replication.reads: {settings.reads!r:.40} is not one of {READ_MODES}")
    if type(settings.lease_drift_ms) is not int:
        raise ConfigError(f"replication.lease_drift_ms: expected int, got {settings.lease_drift_ms!r:.40}")
    if mode == "single":
        if settings != ReplicationConfig():
            raise ConfigError(
                "[replication] settings need leader mode: single mode keeps one copy, written and read at once "
                '(use mode = "leader", or leave [replication] out)'
            )
        return
    if not 0 < settings.lease_drift_ms < election_timeout_ms:
        raise ConfigError(
            f"replication.lease_drift_ms ({settings.lease_drift_ms}) must be positive and below "
            f"timeouts.election_timeout_ms ({election_timeout_ms})"
        )


def resolve_quorum(text: str, replicas: int) -> int:
    """How many of ``replicas`` a read or write quorum named ``text`` waits for: ``one``, ``quorum`` (a
    majority), ``all``, or a number from 1 to ``replicas``. ValueError names what is allowed."""
    if text == "one":
        return 1
    if text == "quorum":
        return replicas // 2 + 1
    if text == "all":
        return replicas
    if text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= replicas:
        return int(text)
    raise ValueError(f"{text!r:.40} is not a quorum: give a number from 1 to {replicas}, or one, quorum, all")


@dataclass(frozen=True)
class LeaderlessConfig:
    """Leaderless mode's defaults (replication/leaderless.py): the quorums, sloppy quorums, the bound on a key's
    siblings, how long tombstones are kept, how often anti-entropy and hinted handoff run, and the conflict
    policy of each key prefix (the longest matching prefix wins; ``siblings`` for the rest)."""

    # Replies a read waits for and acknowledgements a write waits for: a number, or one / quorum / all.
    r: str = "quorum"
    w: str = "quorum"
    # True: an unreachable replica's write goes to the next node with a hint; False: strict quorums.
    sloppy: bool = True
    max_siblings: int = 100
    tombstone_grace_ms: int = 60_000
    # False turns Merkle anti-entropy (or the delivery of hints) off, to show what it does: replicas then
    # converge only through read repair (and hints stay on the fallbacks that took them).
    anti_entropy: bool = True
    anti_entropy_interval_ms: int = 10_000
    hinted_handoff: bool = True
    handoff_interval_ms: int = 1_000
    max_hints: int = 100_000
    policies: tuple[tuple[str, str], ...] = ()

    def policy_name(self, key: str) -> str:
        if key.startswith(EVENT_TIME_PREFIXES):
            return "event-time"
        best, name = -1, "siblings"
        for prefix, policy in self.policies:
            if len(prefix) > best and key.startswith(prefix):
                best, name = len(prefix), policy
        return name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("r", "w", "policies")
        }
        for name in ("r", "w"):
            value = getattr(self, name)
            out[name] = int(value) if value.isdigit() else value
        out["policies"] = dict(self.policies)
        return out

    @staticmethod
    def from_table(table: dict[str, Any]) -> LeaderlessConfig:
        table = dict(table)
        quorums: dict[str, Any] = {}
        for name in ("r", "w"):
            if name in table:
                value = table.pop(name)
                if type(value) is int:
                    value = str(value)
                if not isinstance(value, str):
                    raise ConfigError(
                        f"leaderless.{name}: expected a number or one of {QUORUM_NAMES}, got {value!r:.40}"
                    )
                quorums[name] = value
        policies_table = table.pop("policies", {})
        if not isinstance(policies_table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in policies_table.items()
        ):
            raise ConfigError('leaderless.policies: expected a table of key prefix = policy name, e.g. "cart/" = "lww"')
        return LeaderlessConfig(
            **quorums,
            policies=tuple(sorted(policies_table.items())),
            **_fields_of(LeaderlessConfig, table, "leaderless", skip={"r", "w", "policies"}),
        )


def check_leaderless(settings: LeaderlessConfig, mode: str, replicas: int) -> None:
    """ConfigError unless ``settings`` are valid for a cluster in ``mode`` with ``replicas`` copies per partition."""
    if mode != "leaderless":
        if settings != LeaderlessConfig():
            raise ConfigError('[leaderless] settings need mode = "leaderless" (or leave [leaderless] out)')
        return
    for name in ("r", "w"):
        try:
            resolve_quorum(getattr(settings, name), replicas)
        except ValueError as exc:
            raise ConfigError(f"leaderless.{name}: {exc}") from None
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if type(value) is int and value <= 0:
            raise ConfigError(f"leaderless.{f.name} must be positive, got {value}")
    for prefix, policy in settings.policies:
        if policy not in CONFLICT_POLICIES:
            raise ConfigError(f"leaderless.policies.{prefix!r:.40}: {policy!r:.40} is not one of {CONFLICT_POLICIES}")


@dataclass(frozen=True)
class ClusterConfig:
    nodes: tuple[NodeAddress, ...]
    name: str = "kvstore"
    secret: str = "kvstore-dev-secret"
    mode: Mode = "single"
    # Copies of each partition: leader mode only (default DEFAULT_LEADER_REPLICAS); None: the mode's default.
    replicas: int | None = None
    partitions: int = 64
    # The nodes the cluster was made with, which the first layout is built from; empty: every node. A node
    # added later is in ``nodes`` (so it can run) but not here: it joins at run time.
    initial_nodes: tuple[str, ...] = ()
    partitioner: Partitioner = "hash"
    # Whether members move partitions (leader mode: change groups' members) toward the balanced layout by
    # themselves. Off, only ``POST /admin/moves`` moves one, and a leaving node is not drained until it is on.
    rebalance: bool = True
    ranges: RangesConfig = field(default_factory=RangesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    leaderless: LeaderlessConfig = field(default_factory=LeaderlessConfig)

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("nodes: at least one node is required")
        ids = [n.node_id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"nodes: duplicate node ids in {ids}")
        if self.mode not in MODES:
            raise ConfigError(f"cluster.mode: {self.mode!r} is not one of {MODES}")
        if not isinstance(self.initial_nodes, tuple) or not all(
            isinstance(n, str) and n for n in self.initial_nodes
        ):
            raise ConfigError("cluster.initial_nodes must be a list of node ids")
        if len(set(self.initial_nodes)) != len(self.initial_nodes):
            raise ConfigError(f"cluster.initial_nodes lists a node twice: {list(self.initial_nodes)}")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(f"cluster.partitioner: {self.partitioner!r} is not one of {PARTITIONERS}")
        try:
            self.ranges.policy()
        except ValueError as exc:
            raise ConfigError(f"ranges: {exc}") from exc
        if self.ranges.check_interval_ms <= 0:
            raise ConfigError(f"ranges.check_interval_ms must be positive, got {self.ranges.check_interval_ms}")
        if self.partitions < 1:
            raise ConfigError("cluster.partitions must be at least 1")
        self._check_replicas()
        replication_mode = "leader" if self.mode == "leader" else "single"
        check_replication(self.replication, replication_mode, self.timeouts.election_timeout_ms)
        check_leaderless(self.leaderless, self.mode, self.replication_factor)
        if self.storage.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"storage.fsync: {self.storage.fsync!r} is not one of {FSYNC_POLICIES}")
        if self.storage.engine not in STORAGE_ENGINES:
            raise ConfigError(f"storage.engine: {self.storage.engine!r} is not one of {STORAGE_ENGINES}")
        for section in (self.storage, self.limits, self.timeouts):
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if isinstance(value, int) and value <= 0:
                    raise ConfigError(f"{_SECTION_NAMES[type(section)]}.{f.name} must be positive, got {value}")

    def _check_replicas(self) -> None:
        replicas = self.replicas
        if replicas is not None and (type(replicas) is not int or replicas < 1):
            raise ConfigError(f"cluster.replicas must be a positive int, got {replicas!r:.40}")
        if self.mode == "single":
            if replicas not in (None, 1):
                raise ConfigError(
                    f"cluster.replicas = {replicas}: single mode keeps one copy of each partition "
                    '(use mode = "leader" for replicated partitions, or leave replicas out)'
                )
            return
        founders = len(self.founding_nodes)
        if self.replication_factor > founders:
            raise ConfigError(
                f"cluster.replicas = {self.replication_factor} needs at least as many founding nodes, "
                f"but the cluster is founded by {founders}"
            )
        if self.partitioner != "hash":
            raise ConfigError(
                f'cluster.partitioner = "range" is not supported in {self.mode} mode yet (splits and merges would '
                "change the partitions' replicas); use the hash partitioner"
            )
        if self.mode == "leaderless":
            return
        if not self.timeouts.heartbeat_interval_ms < self.timeouts.election_timeout_ms:
            raise ConfigError(
                f"timeouts.heartbeat_interval_ms ({self.timeouts.heartbeat_interval_ms}) must be below "
                f"timeouts.election_timeout_ms ({self.timeouts.election_timeout_ms})"
            )

    @property
    def replication_factor(self) -> int:
        """Copies of each partition in the founders' layout: ``replicas`` in leader and leaderless mode (default 3),
        1 in single."""
        if self.mode == "single":
            return 1
        return DEFAULT_LEADER_REPLICAS if self.replicas is None else self.replicas

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(n.node_id for n in self.nodes)

    @property
    def founding_nodes(self) -> tuple[str, ...]:
        """The nodes the first layout is built from: ``initial_nodes``, or every node."""
        return self.initial_nodes or self.node_ids

    def address_text(self, node_id: str) -> str:
        """``host:port`` of a node in ``nodes``, "" for one that is not (a founding node removed since)."""
        for n in self.nodes:
            if n.node_id == node_id:
                return f"{n.host}:{n.port}"
        return ""

    def node(self, node_id: str) -> NodeAddress:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise ConfigError(f"no node {node_id!r} in the cluster (nodes: {', '.join(self.node_ids)})")

    # ------------------------------------------------------------ TOML

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ClusterConfig:
        unknown = set(data) - {
            "cluster", "nodes", "ranges", "storage", "limits", "timeouts", "replication", "leaderless"
        }
        if unknown:
            raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
        cluster = _table(data, "cluster")
        nodes_table = _table(data, "nodes")
        nodes = []
        for node_id, address in nodes_table.items():
            if not isinstance(address, str):
                raise ConfigError(f"nodes.{node_id}: expected a 'host:port' string")
            nodes.append(NodeAddress.parse(node_id, address))
        kwargs = _fields_of(
            ClusterConfig,
            cluster,
            "cluster",
            skip={"nodes", "ranges", "storage", "limits", "timeouts", "replication", "leaderless"},
        )
        if "initial_nodes" in kwargs:
            initial = kwargs["initial_nodes"]
            if not isinstance(initial, list):
                raise ConfigError("cluster.initial_nodes must be a list of node ids")
            kwargs["initial_nodes"] = tuple(initial)
        return ClusterConfig(
            nodes=tuple(nodes),
            ranges=RangesConfig(**_fields_of(RangesConfig, _table(data, "ranges"), "ranges")),
            storage=StorageConfig(**_fields_of(StorageConfig, _retired(_table(data, "storage"), "storage"), "storage")),
            limits=Limits(**_fields_of(Limits, _table(data, "limits"), "limits")),
            timeouts=Timeouts(**_fields_of(Timeouts, _table(data, "timeouts"), "timeouts")),
            replication=ReplicationConfig(
                **_fields_of(ReplicationConfig, _table(data, "replication"), "replication")
            ),
            leaderless=LeaderlessConfig.from_table(_table(data, "leaderless")),
            **kwargs,
        )

    @staticmethod
    def load(path: str | Path) -> ClusterConfig:
        return ClusterConfig.from_dict(read_toml(path, "config", ConfigError))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": {
                "name": self.name,
                "secret": self.secret,
                "mode": self.mode,
                **({"replicas": self.replicas} if self.replicas is not None else {}),
                "partitions": self.partitions,
                "partitioner": self.partitioner,
                **({"initial_nodes": list(self.initial_nodes)} if self.initial_nodes else {}),
                **({} if self.rebalance else {"rebalance": False}),
            },
            "nodes": {n.node_id: f"{n.host}:{n.port}" for n in self.nodes},
            "ranges": dataclasses.asdict(self.ranges),
            "storage": dataclasses.asdict(self.storage),
            "limits": dataclasses.asdict(self.limits),
            "timeouts": dataclasses.asdict(self.timeouts),
            "replication": dataclasses.asdict(self.replication),
            **({"leaderless": self.leaderless.to_dict()} if self.mode == "leaderless" else {}),
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())

    def replace(self, **changes: Any) -> ClusterConfig:
        return dataclasses.replace(self, **changes)


_SECTION_NAMES: dict[type, str] = {StorageConfig: "storage", Limits: "limits", Timeouts: "timeouts"}


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return cast(dict[str, Any], value)


def _retired(table: dict[str, Any], section: str) -> dict[str, Any]:
    """``table`` without the settings this version no longer reads, each named in a warning."""
    retired = RETIRED_SETTINGS.get(section, {})
    for key in sorted(retired.keys() & table.keys()):
        log.warning("%s.%s is no longer used and is ignored: %s", section, key, retired[key])
    return {key: value for key, value in table.items() if key not in retired}


def _fields_of(cls: type, table: dict[str, Any], section: str, skip: frozenset[str] | set[str] = frozenset()) -> (
    dict[str, Any]
):
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{section}.{key}: unknown setting (known: {', '.join(sorted(known))})")
        default = f.default
        if type(default) in (int, bool, str) and type(value) is not type(default):
            raise ConfigError(f"{section}.{key}: expected {type(default).__name__}, got {value!r}")
        out[key] = value
    return out


def local_cluster(node_count: int, base_port: int = 7001, **overrides: Any) -> ClusterConfig:
    """A cluster of ``node_count`` nodes on 127.0.0.1, ids n1..nK, consecutive ports."""
    nodes = tuple(NodeAddress(f"n{i + 1}", "127.0.0.1", base_port + i) for i in range(node_count))
    return ClusterConfig(nodes=nodes, **overrides)
