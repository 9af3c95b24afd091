"""Leaderless quorum replication (issue 15) on real local clusters: throughput and latency beside leader mode,
messages per operation, convergence after a partition heals with and without anti-entropy, and the bytes of a
Merkle round beside a full copy.

    python bench/leaderless.py [--quick] [--runs 3] [--json] [--nodes 3,5] [--quorums 1,2,3,abd]

Run it from the repository with ``PYTHONPATH=.`` (the node processes inherit the environment, and must run the
code this script imports; the report names where that code is).

Throughput. For each cluster size (``--nodes``, 3 and 5), with N = 3 replicas of each of 64 partitions (sqlite,
``--fsync``), one leader-mode cluster and one leaderless cluster run in turn, never together (the order swaps
every run). Each is preloaded with ``--keys`` keys. ``--clients`` closed-loop aiohttp clients (the load
generator of ``bench/replication_vs_etcd.py``) then send GETs, then PUTs, on keys drawn uniformly:
``--warmup`` seconds discarded, ``--duration`` seconds measured, ops/s (answered), p50, p99. Leader mode is
the reference: sync writes and its default reads (read-index), each sent to the key's partition leader.
Leaderless, each quorum setting: ``r=k`` / ``w=k`` for k in 1, 2, 3, and ``abd`` (``consistency=linearizable``:
ABD reads and writes over majorities), each sent to the key's first preference replica (any replica
coordinates; the others are one forward away). A GET answered 200 or 300 (siblings) counts as done. PUTs
carry the causal context the previous PUT of that key returned, as a client writing what it read would, so
the bench's own writes supersede each other instead of piling up siblings. Messages per op: the cluster's
peer messages (``kvstore_peer_messages_sent_total``, every kind; in leader mode the multi-Raft envelopes, as
sent) in the measured seconds divided by the ops answered. Background traffic counts too: leader mode's
heartbeats, and leaderless anti-entropy rounds (one per partition and node every ``anti_entropy_interval_ms``,
two messages when the trees agree): up to about 0.2 messages per op at these rates. Ratios: leaderless /
leader of the same run, size and op (ops/s and p50), the median of the per-run ratios.

Convergence after a heal (3 nodes, N = 3, so every node holds every partition and no fallback exists: nothing is
hinted, and only anti-entropy, or a read's repair, can bring a replica what it missed). A fresh cluster is
preloaded (``--keys``) and left until every replica agrees; then n3 is killed (SIGKILL: its peers' sends fail at
once), ``--partition-writes`` new keys are written through n1 with ``w=1``, and n3 is restarted with its data
(the heal). From when it answers /health, every replica's copy of every partition is read through the admin
route ``/admin/copies/{partition}`` and compared (``chaos.run_real.replica_convergence``, the convergence
checker's own reader), every ``--poll`` seconds, until all agree or ``--heal-timeout`` passes. That route reads
each node's store as it is and repairs nothing; the bench makes no quorum read. Once with ``anti_entropy =
true`` (rounds every ``--ae-interval-ms``) and once with ``anti_entropy = false``, per run.

Merkle bytes. From the run without anti-entropy, which leaves n3 behind, each partition whose copies on n1 and
n3 differ is read from both (the same admin route: the stored states, byte for byte) and a Merkle round of
``replication/anti_entropy.py`` (the replica's own class and shape) is driven between the two copies in this
process, its messages handed from one side to the other, the states it exchanges merged. Its bytes are the
round's own count (``RoundStats``: hashes, digests, keys and states, both ways); a full copy of the partition is
n1's keys and states. Reported summed over the differing partitions, and as merkle / full copy.

Exits 1 when a cluster cannot start or a load run fails, 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from leader_cluster import BenchError, LeaderView, wait_for_leaders
from replication_vs_etcd import KEY_PREFIX, REQUEST_TIMEOUT_S, KvTarget, Sample, Target, measure
from replication_vs_etcd import Settings as LoadSettings
from report_format import filesystem_of, rounded

import kvstore
from chaos.run_real import replica_convergence
from kvstore.client import AsyncClient
from kvstore.cluster import ClusterError, LocalCluster, cluster_view
from kvstore.config import LeaderlessConfig
from kvstore.leaderless_mode import CONTEXT_HEADER
from partitioning.partition_map import PartitionMap
from replication import dvv
from replication.anti_entropy import AntiEntropy, RoundStats

REPLICAS = 3
NODE_COUNTS = (3, 5)
QUORUMS = ("1", "2", "3", "abd")
OPS = ("GET", "PUT")
LEADER = "leader"
LEADERLESS = "leaderless"
FSYNC_POLICIES = ("always", "batch")
# The node that is cut off in the convergence scenario, and the one the writes meanwhile go through.
CUT_NODE = "n3"
WRITE_NODE = "n1"
HEAL_PREFIX = "heal-"
WRITE_CONNECTIONS = 16
PRELOAD_CONNECTIONS = 16
PRELOAD_ATTEMPTS = 20
PRELOAD_RETRY_S = 0.25
# How long a leader-mode cluster may take to hand each partition's leadership to its preferred owner.
LEADER_SETTLE_S = 30.0
# How long the preloaded cluster may take to agree everywhere before the node is cut.
SETTLE_TIMEOUT_S = 60.0
ERROR_TEXT_CHARS = 300
# A Merkle round between two copies is a ping-pong of a few messages per differing chunk: far fewer than this.
MAX_ROUND_MESSAGES = 100_000


@dataclass(frozen=True)
class Settings:
    keys: int
    value_bytes: int
    clients: int
    duration_s: float
    warmup_s: float
    fsync: str
    partition_writes: int
    heal_timeout_s: float
    poll_s: float
    ae_interval_ms: int

    def load(self) -> LoadSettings:
        """What the shared load generator takes (it reads no rest figures here)."""
        return LoadSettings(self.keys, self.value_bytes, self.duration_s, self.warmup_s, rest_s=0.0, rest_settle_s=0.0)


# ---------------------------------------------------------------- clusters


def open_cluster(
    directory: Path, nodes: int, mode: str, fsync: str, leaderless: LeaderlessConfig | None
) -> LocalCluster:
    """The cluster kept in ``directory``, up: made on first use (with ``leaderless`` settings), reused after with
    its data, so a later run needs no preload."""
    if not (directory / "cluster.toml").exists():
        made = LocalCluster.create(directory, nodes=nodes, fsync=fsync, engine="sqlite", mode=mode, replicas=REPLICAS)
        if leaderless is not None:
            made.config.replace(leaderless=leaderless).save(made.config_path)
    cluster = LocalCluster.open(directory)
    cluster.up()
    return cluster


def node_urls(cluster: LocalCluster) -> dict[str, str]:
    return {n.node_id: n.url for n in cluster.config.nodes}


def preference_view(urls: dict[str, str]) -> LeaderView:
    """Where the bench sends a leaderless op: the key's first preference replica, as the map says (in the place
    of the leader, which leaderless mode has not)."""
    for url in urls.values():
        doc = cluster_view(url)
        if doc is not None:
            partition_map = PartitionMap.from_json(doc["partition_map"])
            first = {p: nodes[0] for p, nodes in enumerate(partition_map.replicas)}
            return LeaderView(partition_map, first, urls)
    raise BenchError("no node of the leaderless cluster answers GET /cluster")


def wait_for_preferred_leaders(urls: dict[str, str], timeout_s: float) -> LeaderView:
    """The leaders once each partition is led by its preferred owner (leader mode hands leadership back to it
    soon after a start; a handback refuses the partition's writes for a moment), or as they are after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = wait_for_leaders(urls)
        owners = view.partition_map.replicas
        if all(view.leaders[p] == nodes[0] for p, nodes in enumerate(owners)) or time.monotonic() > deadline:
            return view
        time.sleep(PRELOAD_RETRY_S)


async def _preload(url: str, settings: Settings) -> None:
    """PUT ``bench-000000`` ... once each (the load generator's keys), so GETs hit. A definite refusal
    (503: a partition's leadership or replica moving) is sent again, a few times."""
    keys = deque(range(settings.keys))
    value = b"v" * settings.value_bytes

    async def worker(session: aiohttp.ClientSession) -> None:
        while keys:
            key = f"{KEY_PREFIX}{keys.popleft():06d}"
            for attempt in range(PRELOAD_ATTEMPTS):
                async with session.put(f"{url}/kv/{key}", data=value) as response:
                    error = await _done(response, (200,))
                if error is None:
                    break
                if response.status != 503 or attempt == PRELOAD_ATTEMPTS - 1:
                    raise BenchError(f"preloading {url}: PUT {key}: {error}")
                await asyncio.sleep(PRELOAD_RETRY_S)

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(PRELOAD_CONNECTIONS)))


def preload(url: str, settings: Settings) -> None:
    asyncio.run(_preload(url, settings))


# ---------------------------------------------------------------- targets (the load generator calls put)


async def _done(response: aiohttp.ClientResponse, ok: tuple[int, ...]) -> str | None:
    body = await response.read()
    if response.status in ok:
        return None
    return f"HTTP {response.status}: {body[:ERROR_TEXT_CHARS].decode(errors='replace')}"


class LeaderGet:
    """A GET at the key's partition leader, served as the cluster's reads setting says."""

    def __init__(self, view: LeaderView) -> None:
        self._view = view

    async def put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> str | None:
        async with session.get(f"{self._view.url_for(key)}/kv/{key}") as response:
            return await _done(response, (200,))


class LeaderlessOp:
    """One leaderless op at one quorum setting, at the key's first preference replica. PUTs send back the
    context the last PUT of the key returned (``contexts``, shared by every setting of the cluster)."""

    def __init__(self, view: LeaderView, op: str, quorum: str, contexts: dict[str, str]) -> None:
        self._view = view
        self._op = op
        if quorum == "abd":
            self._query = "?consistency=linearizable"
        else:
            self._query = f"?{'r' if op == 'GET' else 'w'}={quorum}"
        self._contexts = contexts

    async def put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> str | None:
        url = f"{self._view.url_for(key)}/kv/{key}{self._query}"
        if self._op == "GET":
            async with session.get(url) as response:
                return await _done(response, (200, 300))
        context = self._contexts.get(key)
        headers = {CONTEXT_HEADER: context} if context else {}
        async with session.put(url, data=value, headers=headers) as response:
            error = await _done(response, (200,))
            if error is None:
                self._contexts[key] = response.headers[CONTEXT_HEADER]
            return error


# ---------------------------------------------------------------- throughput

# (nodes, mode, quorum, op); leader mode's quorum is "-".
RowKey = tuple[int, str, str, str]


def measure_cluster(
    stack_dir: Path, nodes: int, mode: str, settings: Settings, quorums: Sequence[str], progress: str | None
) -> dict[RowKey, Sample]:
    """Every op (and, leaderless, every quorum setting) once on the ``mode`` cluster of ``nodes`` nodes."""
    directory = stack_dir / f"{mode}-{nodes}"
    fresh = not (directory / "cluster.toml").exists()
    cluster = open_cluster(directory, nodes, mode, settings.fsync, LeaderlessConfig() if mode == LEADERLESS else None)
    try:
        urls = node_urls(cluster)
        view = wait_for_preferred_leaders(urls, LEADER_SETTLE_S) if mode == LEADER else preference_view(urls)
        if fresh:
            preload(next(iter(urls.values())), settings)
        plan: list[tuple[RowKey, Target]] = []
        if mode == LEADER:
            plan = [
                ((nodes, LEADER, "-", "GET"), LeaderGet(view)),
                ((nodes, LEADER, "-", "PUT"), KvTarget(view, "sync")),
            ]
        else:
            contexts: dict[str, str] = {}
            plan = [((nodes, LEADERLESS, q, op), LeaderlessOp(view, op, q, contexts)) for op in OPS for q in quorums]
        out: dict[RowKey, Sample] = {}
        for key, target in plan:
            sample = measure(target, settings.clients, settings.load(), urls)
            out[key] = sample
            if progress is not None:
                print(f"  {progress} {_label(key):<28} {_line(sample)}", file=sys.stderr)
        return out
    finally:
        cluster.down(grace_s=5.0)


def _label(key: RowKey) -> str:
    nodes, mode, quorum, op = key
    setting = "" if mode == LEADER else (" abd" if quorum == "abd" else f" {'r' if op == 'GET' else 'w'}={quorum}")
    return f"{nodes} nodes {mode}{setting} {op}"


def _line(s: Sample) -> str:
    return (
        f"{s.puts_per_s:7.0f} ops/s p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:7.2f} ms "
        f"msgs/op {s.messages_per_write or 0:5.2f} errors {s.errors}"
    )


def summarize_throughput(samples: dict[RowKey, list[Sample]]) -> list[dict[str, Any]]:
    """Median rows, each leaderless one with its ratios to leader mode's of the same size and op, paired by run."""
    rows = []
    for key, runs in samples.items():
        nodes, mode, quorum, op = key
        reference = samples.get((nodes, LEADER, "-", op))
        row: dict[str, Any] = {
            "nodes": nodes,
            "mode": mode,
            "quorum": quorum,
            "op": op,
            "ops_per_s": statistics.median(s.puts_per_s for s in runs),
            "p50_ms": statistics.median(s.p50_ms for s in runs),
            "p99_ms": statistics.median(s.p99_ms for s in runs),
            "messages_per_op": statistics.median(s.messages_per_write or 0.0 for s in runs),
            "errors": sum(s.errors for s in runs),
            "runs_ops_per_s": [round(s.puts_per_s) for s in runs],
            "ratio_to_leader": None,
            "p50_ratio_to_leader": None,
        }
        if mode == LEADERLESS and reference is not None:
            pairs = list(zip(runs, reference, strict=True))
            row["ratio_to_leader"] = statistics.median(a.puts_per_s / b.puts_per_s for a, b in pairs if b.puts_per_s)
            row["p50_ratio_to_leader"] = statistics.median(a.p50_ms / b.p50_ms for a, b in pairs if b.p50_ms > 0)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- convergence after a heal


@dataclass(frozen=True)
class HealSample:
    anti_entropy: bool
    # Seconds from the cut node answering /health to every replica agreeing; None: not within the timeout.
    converged_s: float | None
    # Keys whose replicas still disagreed at the last look.
    diverged_keys: int
    merkle: dict[str, int] | None = None


async def _write_during_cut(url: str, settings: Settings) -> None:
    """``partition_writes`` new keys through ``url`` with ``w=1``; every one must be acknowledged."""
    keys = deque(f"{HEAL_PREFIX}{i:06d}" for i in range(settings.partition_writes))
    value = b"h" * settings.value_bytes

    async def writer(session: aiohttp.ClientSession) -> None:
        while keys:
            key = keys.popleft()
            async with session.put(f"{url}/kv/{key}?w=1", data=value) as response:
                error = await _done(response, (200,))
            if error is not None:
                raise BenchError(f"a w=1 write while {CUT_NODE} was down failed: {error}")

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(writer(session) for _ in range(WRITE_CONNECTIONS)))


def _convergence(urls: dict[str, str], secret: str) -> dict[str, Any]:
    return asyncio.run(replica_convergence(urls, secret, REQUEST_TIMEOUT_S))


def wait_converged(urls: dict[str, str], secret: str, timeout_s: float, poll_s: float) -> tuple[float | None, int]:
    """Seconds until every replica's copy agrees (None: not within ``timeout_s``), and the keys still diverged."""
    started = time.monotonic()
    while True:
        verdict = _convergence(urls, secret)
        elapsed_s = time.monotonic() - started
        if verdict["valid"] is True:
            return elapsed_s, 0
        if elapsed_s > timeout_s:
            return None, int(verdict.get("diverged_count", -1))
        time.sleep(poll_s)


def heal_run(work_dir: Path, settings: Settings, anti_entropy: bool, with_merkle: bool) -> HealSample:
    config = LeaderlessConfig(anti_entropy=anti_entropy, anti_entropy_interval_ms=settings.ae_interval_ms)
    cluster = open_cluster(work_dir, 3, LEADERLESS, settings.fsync, config)
    try:
        urls = node_urls(cluster)
        secret = cluster.config.secret
        preload(urls[WRITE_NODE], settings)
        # The preload's third copies arrive after its answers: the cut starts from replicas that agree.
        if wait_converged(urls, secret, SETTLE_TIMEOUT_S, settings.poll_s)[0] is None:
            raise BenchError(f"the preloaded cluster did not converge within {SETTLE_TIMEOUT_S:g} s")
        # Under fsync "batch" the last changes reach the disk within the batch interval: let them, before SIGKILL.
        time.sleep(max(0.2, cluster.config.storage.batch_interval_ms / 1000 * 5))
        cluster.kill(CUT_NODE)
        asyncio.run(_write_during_cut(urls[WRITE_NODE], settings))
        cluster.restart(CUT_NODE)
        merkle = merkle_of_cut(urls, secret) if with_merkle else None
        converged_s, diverged = wait_converged(urls, secret, settings.heal_timeout_s, settings.poll_s)
        return HealSample(anti_entropy, converged_s, diverged, merkle)
    finally:
        cluster.down(grace_s=5.0)


# ---------------------------------------------------------------- Merkle round against a full copy


async def _copies(urls: dict[str, str], secret: str, partitions: int) -> dict[tuple[str, int], dict[str, bytes]]:
    """Each partition's stored states (key -> encoded state, the record's context) on the write node and the cut one."""
    clients = {
        node: AsyncClient([urls[node]], route_by_map=False, timeout_s=REQUEST_TIMEOUT_S)
        for node in (WRITE_NODE, CUT_NODE)
    }
    try:
        out: dict[tuple[str, int], dict[str, bytes]] = {}
        for node, client in clients.items():
            for partition in range(partitions):
                copy = await client.replica_copy(partition, secret=secret)
                out[(node, partition)] = {key: record.context for key, record in copy.records}
        return out
    finally:
        for client in clients.values():
            await client.close()


def merkle_of_cut(urls: dict[str, str], secret: str) -> dict[str, int]:
    """A Merkle round over each partition whose copy on the cut node differs from the write node's, in process."""
    doc = cluster_view(urls[WRITE_NODE])
    if doc is None:
        raise BenchError(f"{WRITE_NODE} does not answer GET /cluster")
    partitions = PartitionMap.from_json(doc["partition_map"]).partition_count
    copies = asyncio.run(_copies(urls, secret, partitions))
    totals = {"partitions": 0, "keys_differing": 0, "merkle_bytes": 0, "full_copy_bytes": 0, "rounds_equal_after": 0}
    for partition in range(partitions):
        source, stale = copies[(WRITE_NODE, partition)], copies[(CUT_NODE, partition)]
        if source == stale:
            continue
        stats, equal_after = merkle_round(source, stale)
        totals["partitions"] += 1
        totals["keys_differing"] += sum(1 for k in source.keys() | stale.keys() if source.get(k) != stale.get(k))
        totals["merkle_bytes"] += stats.bytes_sent + stats.bytes_received
        totals["full_copy_bytes"] += sum(len(k.encode()) + len(s) for k, s in source.items())
        totals["rounds_equal_after"] += equal_after
    return totals


def merkle_round(source: dict[str, bytes], stale: dict[str, bytes]) -> tuple[RoundStats, bool]:
    """One round, started by the stale copy's side, to its end: its stats (both ways), and whether the two
    copies are equal after merging what it exchanged (they should be)."""
    sides = {"source": (AntiEntropy(), dict(source)), "stale": (AntiEntropy(), dict(stale))}
    for tree, states in sides.values():
        for key, state in states.items():
            tree.record(key, None, state)
    stale_ae = sides["stale"][0]
    queue = deque(("stale", dst, msg) for dst, msg in stale_ae.start(0, "source", session=1))
    finished: RoundStats | None = None
    for _ in range(MAX_ROUND_MESSAGES):
        if not queue:
            break
        src, dst, msg = queue.popleft()
        ae, states = sides[dst]
        step = ae.on_message(0, src, msg, _reader(states))
        for key, incoming in step.merge:
            old = states.get(key)
            merged = dvv.encode(
                dvv.decode(incoming) if old is None else dvv.merge(dvv.decode(old), dvv.decode(incoming))
            )
            ae.record(key, old, merged)
            states[key] = merged
        queue.extend((dst, peer, out) for peer, out in step.sends)
        if step.finished is not None and dst == "stale":
            finished = step.finished
    if finished is None:
        raise BenchError("a Merkle round between two copies did not finish")
    return finished, sides["source"][1] == sides["stale"][1]


def _reader(states: dict[str, bytes]) -> Callable[[Sequence[str]], dict[str, bytes]]:
    """The ``states`` callback of one side: its current states of the keys asked (absent ones left out)."""
    return lambda keys: {k: states[k] for k in keys if k in states}


def summarize_heal(samples: list[HealSample], timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for anti_entropy in (True, False):
        runs = [s for s in samples if s.anti_entropy == anti_entropy]
        if not runs:
            continue
        times = [s.converged_s for s in runs if s.converged_s is not None]
        rows.append(
            {
                "anti_entropy": anti_entropy,
                "runs": len(runs),
                "converged_runs": len(times),
                # The median over every run, a run that did not converge counting as the longest.
                "converged_s_median": statistics.median(times) if len(times) * 2 > len(runs) else None,
                "runs_converged_s": [s.converged_s for s in runs],
                "diverged_keys_at_timeout": [s.diverged_keys for s in runs if s.converged_s is None],
                "timeout_s": timeout_s,
            }
        )
    return rows


def summarize_merkle(samples: list[HealSample]) -> dict[str, Any] | None:
    runs = [s.merkle for s in samples if s.merkle is not None and s.merkle["partitions"]]
    if not runs:
        return None
    ratios = [m["merkle_bytes"] / m["full_copy_bytes"] for m in runs]
    return {
        "runs": len(runs),
        **{name: statistics.median(m[name] for m in runs) for name in runs[0]},
        "ratio": statistics.median(ratios),
        "runs_ratio": ratios,
    }


# ---------------------------------------------------------------- schedule and report


def run_bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    progress = not args.json
    load_start = os.getloadavg()
    throughput: dict[RowKey, list[Sample]] = {}
    heal: list[HealSample] = []
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-leaderless-", dir=args.tmp_dir) as tmp:
        work_dir = Path(tmp)
        data_filesystem = filesystem_of(work_dir)
        for run in range(args.runs):
            tag = f"run {run + 1}/{args.runs}"
            modes = (LEADER, LEADERLESS) if run % 2 == 0 else (LEADERLESS, LEADER)
            for nodes in args.nodes:
                for mode in modes:
                    found = measure_cluster(work_dir, nodes, mode, settings, args.quorums, tag if progress else None)
                    for key, sample in found.items():
                        throughput.setdefault(key, []).append(sample)
            for anti_entropy in (True, False):
                healed = heal_run(work_dir / f"heal-{run}-{anti_entropy}", settings, anti_entropy, not anti_entropy)
                heal.append(healed)
                if progress:
                    took = "not converged" if healed.converged_s is None else f"converged in {healed.converged_s:.1f} s"
                    print(f"  {tag} heal, anti_entropy={anti_entropy}: {took}; merkle {healed.merkle}", file=sys.stderr)
    report: dict[str, Any] = rounded(
        {
            "bench": "leaderless",
            "runs": args.runs,
            "quick": args.quick,
            "settings": asdict(settings),
            "cpu_count": os.cpu_count(),
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "code": str(Path(kvstore.__file__).resolve().parents[1]),
            "data_filesystem": data_filesystem,
            "throughput": summarize_throughput(throughput),
            "convergence": summarize_heal(heal, settings.heal_timeout_s),
            "merkle": summarize_merkle(heal),
        }
    )
    return report


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Leaderless (N=3) vs leader mode, 64 partitions, sqlite fsync={s['fsync']}; {s['clients']} closed-loop "
        f"aiohttp clients, {s['keys']} keys, {s['value_bytes']}-byte values, {s['duration_s']:g} s per measurement "
        f"after {s['warmup_s']:g} s warm-up; median of {report['runs']} run(s) ({report['cpu_count']} CPUs, "
        f"load average {report['load_average_start'][0]:.2f} at start, {report['load_average_end'][0]:.2f} at end; "
        f"Python {report['python']}; code in {report['code']}; data on {report['data_filesystem']})",
        "",
        f"{'nodes':>5} {'mode':<10} {'quorum':<6} {'op':<4} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'x leader':>8} "
        f"{'p50 x':>6} {'msgs/op':>7} {'errors':>6}  ops/s per run",
    ]
    for r in report["throughput"]:
        ratio = "-" if r["ratio_to_leader"] is None else f"{r['ratio_to_leader']:.2f}"
        p50_ratio = "-" if r["p50_ratio_to_leader"] is None else f"{r['p50_ratio_to_leader']:.2f}"
        lines.append(
            f"{r['nodes']:>5} {r['mode']:<10} {r['quorum']:<6} {r['op']:<4} {r['ops_per_s']:>7.0f} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>8.2f} {ratio:>8} {p50_ratio:>6} {r['messages_per_op']:>7.2f} {r['errors']:>6}  "
            + ", ".join(str(x) for x in r["runs_ops_per_s"])
        )
    lines += [
        "",
        f"convergence after the heal (3 nodes, {s['partition_writes']} w=1 writes while {CUT_NODE} was down):",
    ]
    for c in report["convergence"]:
        if c["converged_s_median"] is not None:
            verdict = f"converged in {c['converged_s_median']:.1f} s (median)"
        else:
            diverged = c["diverged_keys_at_timeout"]
            verdict = f"did not converge within {c['timeout_s']:g} s (keys still diverged per run: {diverged})"
        shown = ", ".join("-" if t is None else f"{t:.1f}" for t in c["runs_converged_s"])
        lines.append(
            f"  anti_entropy={str(c['anti_entropy']).lower():<5} {verdict}; {c['converged_runs']}/{c['runs']} runs "
            f"converged (s per run: {shown}; anti-entropy every {s['ae_interval_ms']} ms)"
        )
    m = report["merkle"]
    lines.append("")
    if m is None:
        lines.append("Merkle round: no partition differed after the heal (nothing to measure)")
    else:
        lines.append(
            f"Merkle rounds over the {m['partitions']:.0f} differing partitions "
            f"({m['keys_differing']:.0f} keys differ): "
            f"{m['merkle_bytes']:.0f} bytes vs {m['full_copy_bytes']:.0f} bytes of a full copy = {m['ratio']:.3f}x "
            f"(median of {m['runs']} run(s); rounds leaving the copies equal: {m['rounds_equal_after']:.0f})"
        )
    return "\n".join(lines)


def _list(text: str, allowed: tuple[str, ...], option: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen or any(c not in allowed for c in chosen):
        parser.error(f"{option}: choose from {', '.join(allowed)} (comma-separated), not {text!r}")
    return chosen


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run, 1 s per measurement, short heal")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    parser.add_argument("--nodes", default=",".join(map(str, NODE_COUNTS)), help="cluster sizes (3,5)")
    parser.add_argument("--quorums", default=",".join(QUORUMS), help="leaderless settings: r=w=1,2,3 and abd")
    parser.add_argument("--fsync", choices=FSYNC_POLICIES, default="batch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per op and setting")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded load before each")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--partition-writes", type=int, default=500, help="w=1 writes while a node is down")
    parser.add_argument("--heal-timeout", type=float, default=30.0, help="seconds to wait for convergence")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between two reads of every copy")
    parser.add_argument(
        "--ae-interval-ms", type=int, default=LeaderlessConfig().anti_entropy_interval_ms, help="anti-entropy period"
    )
    parser.add_argument("--tmp-dir", help="where the temporary directory with the clusters' data goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup, args.keys = 1, 1.0, 0.5, 300
        args.partition_writes, args.heal_timeout, args.ae_interval_ms = 100, 8.0, 1000
    args.quorums = _list(args.quorums, QUORUMS, "--quorums", parser)
    args.nodes = [int(n) for n in _list(args.nodes, tuple(map(str, NODE_COUNTS)), "--nodes", parser)]
    if min(args.runs, args.clients, args.keys, args.value_bytes, args.partition_writes, args.ae_interval_ms) < 1:
        parser.error("--runs, --clients, --keys, --value-bytes, --partition-writes, --ae-interval-ms: at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.heal_timeout <= 0 or args.poll <= 0:
        parser.error("--duration, --heal-timeout and --poll must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = Settings(
        args.keys,
        args.value_bytes,
        args.clients,
        args.duration,
        args.warmup,
        args.fsync,
        args.partition_writes,
        args.heal_timeout,
        args.poll,
        args.ae_interval_ms,
    )
    try:
        report = run_bench(args, settings)
    except (BenchError, ClusterError) as exc:
        print(f"leaderless bench failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
