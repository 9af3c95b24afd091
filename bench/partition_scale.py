"""Partitioning at scale: lookups at 10,000 partitions beside a dict, and one node joining a 5-node cluster.

1. Lookups per second at 10,000 partitions, each subject beside the reference measured in the same run: a plain
   dict lookup ``d[key]`` in a dict of every key of the set -> its owner (precomputed, so the reference does no
   hashing at all). What "10,000 partitions" means for each structure:

   - ``HashRing.owner(key)`` (key -> node): 10,000 tokens on the ring, 40 nodes x 250 vnodes, so 10,000 arcs
     of the hash space. A lookup is ``key_hash`` (blake2b) and a bisect over the 10,000 token positions.
   - ``owners[key_hash(key) % 10,000]`` (key -> node): 10,000 fixed hash partitions whose owners were placed on
     that ring (``assign_partitions``), which is how the node places keys (with its own partition count).
   - ``RangeMap.partition_for_key(key)`` (key -> partition id): 10,000 ranges, their 9,999 split points drawn from
     random keys of the same shape. A lookup is a bisect over strings, no hash.

   Keys: ``--lookup-keys`` (100,000) distinct random 16-hex-character keys. ``key_hash`` remembers its last 4,096
   keys; a pass over 100,000 keys never finds one still there, so every hashed lookup pays blake2b ("cold"). Each
   run times every subject right after its dict reference (the order rotates from run to run), each timing
   repeating whole passes until it has taken 0.2 s. Figures: medians over ``--runs`` runs of ns per lookup and
   lookups/s, and the median of the per-run ratios subject / dict in lookups/s. The keys, the ring, the range map
   and the timing loop are those of ``bench/partition_placement.py`` (imported), so the figures compare.

2. A join: a 5-node cluster (``LocalCluster``: node processes on 127.0.0.1, SQLite, ``fsync = "batch"``, the
   config's 64 partitions, single mode, data in a temporary directory) is loaded with ``--keys`` (1,000,000) keys
   of ``--value-bytes`` (100) bytes through ``POST /batch`` (1,000 keys a batch, each batch holding only keys of
   one node's partitions and sent straight to that node, ``--load-concurrency`` batches in flight per node: the
   fastest the HTTP API takes writes). Then the disk's sequential write rate is measured in the same directory
   (``bench/partition_move.disk_write_rate``: 128 MiB in 1 MiB blocks, then fsync), and ``LocalCluster.add_node()``
   starts a sixth node and returns once the new layout is in force. Reported:

   - the join's wall time, from the membership order (``add_node``'s ``POST /admin/members``, after the new
     node's process is up and healthy) to the layout in force (``add_node``'s return: every member shows the
     same map, balanced, the new node active and owning partitions); beside it the whole ``add_node`` call,
     which adds starting the process;
   - what moved: the keys and bytes the new node then holds (its ``GET /cluster`` partition stats: keys and
     values), and the bytes streamed (``kvstore_move_bytes_total`` summed over the six nodes, resends included);
   - the minimum that has to move for the new node to hold its share: 1/6 of the keys and of the bytes; ratios
     moved / minimum (partitions move whole: with 64 partitions the new node's share is 10.67 of them, and the
     rebalancer stops within 10% of it, so the ratio can be under 1);
   - the effective rate (bytes now on the new node / join time) against the disk's rate;
   - the load: its time and keys/s.

   After the join a sample of keys is read back through the client (routed by the new map), and the records of
   the six nodes are counted: each key must be on exactly one node.

Prints the report, then one JSON line (``--json``: the JSON line only). Exits 1 if the join fails or a key is
missing or doubled afterwards.

    python bench/partition_scale.py [--runs 3] [--join-runs 1] [--keys 1000000] [--value-bytes 100] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from http_node import BenchError
from partition_move import disk_write_rate
from partition_placement import (
    MEMO_ENTRIES,
    dict_lookup,
    hash_placement,
    lookup_range_map,
    lookup_ring,
    make_keys,
    range_lookup,
    ring_owner,
    timed,
)
from report_format import filesystem_of, rounded

from kvstore.client import MSGPACK_TYPE, AsyncClient
from kvstore.cluster import ClusterError, LocalCluster
from kvstore.messages import Found, Written
from partitioning.hash_partitioner import key_hash
from partitioning.hash_ring import assign_partitions

PARTITIONS = 10_000
LOOKUP_KEYS = 100_000
QUICK_LOOKUP_KEYS = 20_000
MIN_TIMED_S = 0.2
QUICK_MIN_TIMED_S = 0.01

NODES = 5
JOIN_KEYS = 1_000_000
QUICK_JOIN_KEYS = 20_000
VALUE_BYTES = 100
BATCH_KEYS = 1000  # the node's default Limits.max_batch_keys
LOAD_CONCURRENCY = 2
LOAD_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 1800.0
QUICK_JOIN_TIMEOUT_S = 120.0
SAMPLE_KEYS = 500
MOVE_BYTES_METRIC = "kvstore_move_bytes_total"
MOVE_METRICS = (
    MOVE_BYTES_METRIC,
    'kvstore_moves_total{outcome="started"}',
    'kvstore_moves_total{outcome="completed"}',
    'kvstore_moves_total{outcome="abandoned"}',
    "kvstore_move_seconds_total",
)
KEY_PREFIX = "join-"

LookupPass = Callable[[list[str]], None]


# --- 1. lookups


def measure_lookups(keys: list[str], runs: int, min_s: float, seed: int) -> dict[str, Any]:
    ring = lookup_ring()
    range_map = lookup_range_map(random.Random(f"{seed}:split-points"))
    owners = tuple(replicas[0] for replicas in assign_partitions(ring, PARTITIONS, 1))
    reference = dict_lookup({key: ring.owner(key) for key in keys})
    subjects: list[tuple[str, str, str, LookupPass]] = [
        (
            "hash_ring",
            f"HashRing.owner(key), {len(ring.tokens):,} tokens ({len(ring.nodes)} nodes x "
            f"{len(ring.tokens) // len(ring.nodes)} vnodes)",
            "key -> node",
            ring_owner(ring),
        ),
        (
            "hash_partitions",
            f"owners[key_hash(key) % {len(owners):,}], partitions placed on that ring",
            "key -> node",
            hash_placement(owners),
        ),
        (
            "range_map",
            f"RangeMap.partition_for_key(key), {range_map.range_count:,} ranges",
            "key -> partition",
            range_lookup(range_map),
        ),
    ]
    for _, _, _, run in subjects:
        run(keys[:10])
    samples: dict[str, dict[str, list[float]]] = {name: {"ns": [], "ref_ns": []} for name, *_ in subjects}
    for r in range(runs):
        shift = r % len(subjects)
        for name, _, _, run in subjects[shift:] + subjects[:shift]:
            ref_ns, _ = timed(reference, keys, min_s)
            ns, _ = timed(run, keys, min_s)
            samples[name]["ns"].append(ns)
            samples[name]["ref_ns"].append(ref_ns)
    rows = []
    for name, label, maps, _ in subjects:
        s = samples[name]
        ratios = [ref / ns for ref, ns in zip(s["ref_ns"], s["ns"], strict=True)]
        ns, ref_ns = statistics.median(s["ns"]), statistics.median(s["ref_ns"])
        rows.append(
            {
                "name": name,
                "label": label,
                "maps": maps,
                "ns_per_lookup": ns,
                "lookups_per_s": 1e9 / ns,
                "lookups_per_s_runs": [1e9 / x for x in s["ns"]],
                "dict_ns_per_lookup": ref_ns,
                "dict_lookups_per_s": 1e9 / ref_ns,
                "ratio": statistics.median(ratios),
                "ratio_runs": ratios,
            }
        )
    return {
        "partitions": PARTITIONS,
        "ring_tokens": len(ring.tokens),
        "ring_nodes": len(ring.nodes),
        "ranges": range_map.range_count,
        "keys": len(keys),
        "reference": f"d[key], a dict of all {len(keys):,} keys -> owner node, precomputed",
        "min_timed_s": min_s,
        "rows": rows,
    }


# --- 2. the join


@dataclass(frozen=True)
class JoinFigures:
    keys: int
    value_bytes: int
    partitions: int
    load_s: float
    load_keys_per_s: float
    data_keys: int  # records on the five nodes before the join
    data_bytes: int  # their keys and values
    disk_mb_per_s: float
    new_node: str
    join_s: float  # from the membership order to the layout in force
    add_node_s: float  # the whole add_node call: start the node's process, wait for its health, order, wait
    join_timed_from: str
    moved_partitions: int
    moved_keys: int  # records on the new node afterwards
    moved_bytes: int
    streamed_bytes: int  # kvstore_move_bytes_total summed over every node
    moves_started: int  # kvstore_moves_total by outcome, summed over every node
    moves_completed: int
    moves_abandoned: int
    move_seconds_summed: float  # kvstore_move_seconds_total: start to hand-over of completed moves, summed
    min_keys: float  # 1/6 of data_keys
    min_bytes: float
    keys_over_min: float
    bytes_over_min: float
    streamed_over_min: float
    moved_mb_per_s: float
    moved_keys_per_s: float
    disk_ratio: float
    records_after: int  # records of all six nodes after the join: data_keys if every key is on one node
    node_keys_after: list[int]


def key_name(index: int) -> str:
    return f"{KEY_PREFIX}{index:08d}"


async def _cluster_doc(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/cluster", headers={"Accept": MSGPACK_TYPE}) as response:
        body = await response.read()
        if response.status != 200:
            raise BenchError(f"GET {url}/cluster answered {response.status}: {body[:200]!r}")
        doc: dict[str, Any] = msgpack.unpackb(body, raw=False)
        return doc


async def _move_metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The node's move counters from ``/metrics``: bytes streamed, moves by outcome, seconds of completed moves."""
    found = dict.fromkeys(MOVE_METRICS, 0.0)
    async with http.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            sample, _, value = line.rpartition(" ")
            if sample in found:
                found[sample] = float(value)
    return found


def _stored(doc: dict[str, Any]) -> tuple[int, int]:
    """Records and bytes a node reports in its ``/cluster`` partition stats."""
    stats = doc["partition_stats"]
    return sum(s["records"] for s in stats), sum(s["bytes"] for s in stats)


async def load(urls: list[str], keys: int, value: bytes, concurrency: int) -> float:
    """Write keys 0..keys-1, each batch to the owner of its keys; the seconds it took."""
    async with aiohttp.ClientSession() as http:
        doc = await _cluster_doc(http, urls[0])
    member_urls = {m["node_id"]: str(m["url"]).rstrip("/") for m in doc["members"]}
    owners = [member_urls[replicas[0]] for replicas in doc["partition_map"]["replicas"]]
    by_owner: dict[str, list[str]] = {url: [] for url in member_urls.values()}
    count = len(owners)
    for index in range(keys):
        key = key_name(index)
        by_owner[owners[key_hash(key) % count]].append(key)

    async def worker(client: AsyncClient, batches: list[list[str]]) -> None:
        while batches:
            batch = batches.pop()
            results = await client.batch_put([(key, value) for key in batch])
            failed = [r for r in results if not isinstance(r, Written)]
            if failed:
                raise BenchError(f"loading failed: {failed[0]}")

    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for url, owned in by_owner.items():
            client = await stack.enter_async_context(AsyncClient([url], route_by_map=False, timeout_s=LOAD_TIMEOUT_S))
            batches = [owned[i : i + BATCH_KEYS] for i in range(0, len(owned), BATCH_KEYS)]
            batches.reverse()  # popped from the end: sent in key order
            tasks += [worker(client, batches) for _ in range(concurrency)]
        await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def _before_join(urls: list[str]) -> tuple[int, int]:
    async with aiohttp.ClientSession() as http:
        docs = [await _cluster_doc(http, url) for url in urls]
    stored = [_stored(doc) for doc in docs]
    return sum(r for r, _ in stored), sum(b for _, b in stored)


async def _after_join(urls: list[str], new_url: str) -> tuple[dict[str, Any], list[int], dict[str, float]]:
    """The new node's ``/cluster``, every node's record count (in ``urls`` order), the move metrics summed."""
    async with aiohttp.ClientSession() as http:
        docs = {url: await _cluster_doc(http, url) for url in urls}
        per_node = [await _move_metrics(http, url) for url in urls]
    totals = {name: sum(m[name] for m in per_node) for name in MOVE_METRICS}
    return docs[new_url], [_stored(docs[url])[0] for url in urls], totals


async def _read_sample(urls: list[str], keys: int, value: bytes) -> None:
    async with AsyncClient(urls) as client:
        step = max(keys // SAMPLE_KEYS, 1)
        for index in range(0, keys, step):
            found = await client.get(key_name(index))
            if not isinstance(found, Found) or found.value != value:
                raise BenchError(f"{key_name(index)} reads {found!r} after the join")


def _note_membership_orders(cluster: LocalCluster) -> list[float]:
    """The times (perf_counter) at which ``cluster`` sends a membership order from now on: ``add_node`` starts the
    new node's process, waits for its health, then orders the join; the order is where the join proper starts.
    Empty if ``LocalCluster`` no longer has that step (the join is then timed from the call only)."""
    ordered_at: list[float] = []
    order = getattr(cluster, "_order_membership", None)
    if order is None:
        return ordered_at

    def timed(*args: Any, **kwargs: Any) -> Any:
        ordered_at.append(time.perf_counter())
        return order(*args, **kwargs)

    cluster._order_membership = timed  # type: ignore[method-assign]
    return ordered_at


def join_once(work_dir: Path, keys: int, value_bytes: int, concurrency: int, timeout_s: float) -> JoinFigures:
    value = b"v" * value_bytes
    cluster = LocalCluster.create(work_dir / "cluster", nodes=NODES, fsync="batch", engine="sqlite")
    with cluster:
        cluster.up()
        urls = cluster.urls()
        load_s = asyncio.run(load(urls, keys, value, concurrency))
        data_keys, data_bytes = asyncio.run(_before_join(urls))
        if data_keys != keys:
            raise BenchError(f"{keys:,} keys loaded but the nodes hold {data_keys:,} records")
        disk = disk_write_rate(work_dir)
        ordered_at = _note_membership_orders(cluster)
        started = time.perf_counter()
        new_node = cluster.add_node(timeout_s=timeout_s)
        finished = time.perf_counter()
        add_node_s = finished - started
        join_s = finished - ordered_at[-1] if ordered_at else add_node_s
        all_urls = cluster.urls()
        new_url = cluster.url(new_node)
        new_doc, node_keys, moves = asyncio.run(_after_join(all_urls, new_url))
        asyncio.run(_read_sample(all_urls, keys, value))
        partitions = new_doc["partitions"]
    moved_keys, moved_bytes = _stored(new_doc)
    streamed = int(moves[MOVE_BYTES_METRIC])
    moved_partitions = sum(replicas[0] == new_node for replicas in new_doc["partition_map"]["replicas"])
    share = NODES + 1
    min_keys, min_bytes = data_keys / share, data_bytes / share
    rate = moved_bytes / join_s / 1e6
    return JoinFigures(
        keys=keys,
        value_bytes=value_bytes,
        partitions=partitions,
        load_s=load_s,
        load_keys_per_s=keys / load_s,
        data_keys=data_keys,
        data_bytes=data_bytes,
        disk_mb_per_s=disk,
        new_node=new_node,
        join_s=join_s,
        add_node_s=add_node_s,
        join_timed_from="the membership order" if ordered_at else "the add_node call",
        moved_partitions=moved_partitions,
        moved_keys=moved_keys,
        moved_bytes=moved_bytes,
        streamed_bytes=streamed,
        moves_started=int(moves['kvstore_moves_total{outcome="started"}']),
        moves_completed=int(moves['kvstore_moves_total{outcome="completed"}']),
        moves_abandoned=int(moves['kvstore_moves_total{outcome="abandoned"}']),
        move_seconds_summed=moves["kvstore_move_seconds_total"],
        min_keys=min_keys,
        min_bytes=min_bytes,
        keys_over_min=moved_keys / min_keys,
        bytes_over_min=moved_bytes / min_bytes,
        streamed_over_min=streamed / min_bytes,
        moved_mb_per_s=rate,
        moved_keys_per_s=moved_keys / join_s,
        disk_ratio=rate / disk,
        records_after=sum(node_keys),
        node_keys_after=node_keys,
    )


def measure_join(runs: int, keys: int, value_bytes: int, concurrency: int, timeout_s: float) -> dict[str, Any]:
    figures = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="kv-join-") as tmp:
            figures.append(join_once(Path(tmp), keys, value_bytes, concurrency, timeout_s))
    medians = {
        name: statistics.median(getattr(f, name) for f in figures)
        for name in (
            "load_s",
            "load_keys_per_s",
            "disk_mb_per_s",
            "join_s",
            "add_node_s",
            "moved_keys",
            "moved_bytes",
            "streamed_bytes",
            "keys_over_min",
            "bytes_over_min",
            "streamed_over_min",
            "moved_mb_per_s",
            "moved_keys_per_s",
            "disk_ratio",
        )
    }
    return {
        "nodes_before": NODES,
        "keys": keys,
        "value_bytes": value_bytes,
        "batch_keys": BATCH_KEYS,
        "load_concurrency_per_node": concurrency,
        "fsync": "batch",
        "engine": "sqlite",
        "filesystem": filesystem_of(Path(tempfile.gettempdir())),
        "runs": [asdict(f) for f in figures],
        "median": medians,
        "ok": all(f.records_after == f.data_keys for f in figures),
    }


# --- report


def _rate(per_s: float) -> str:
    return f"{per_s / 1e6:.2f}M" if per_s >= 1e6 else f"{per_s / 1e3:,.0f}k"


def render(report: dict[str, Any]) -> str:
    m, lk = report["machine"], report["lookups"]
    lines = [
        f"bench/partition_scale.py: {m['cpu_count']} CPUs, Python {m['python']}; lookups median of {report['runs']} "
        f"run(s), join {report['join_runs']} run(s)",
        "",
        f"1. Lookups at {lk['partitions']:,} partitions: {lk['keys']:,} random keys (all miss key_hash's memo); "
        f"reference {lk['reference']}",
        f"{'subject':<62} {'maps':<16} {'ns/lookup':>9} {'lookups/s':>9} {'dict/s':>7} {'/ dict':>7}",
    ]
    for r in lk["rows"]:
        lines.append(
            f"{r['label']:<62} {r['maps']:<16} {r['ns_per_lookup']:>9,.0f} {_rate(r['lookups_per_s']):>9} "
            f"{_rate(r['dict_lookups_per_s']):>7} {r['ratio']:>6.3f}x"
        )
    jn = report.get("join")
    if jn is None:
        return "\n".join(lines)
    md = jn["median"]
    first = jn["runs"][0]
    mb = 1e6
    lines += [
        "",
        f"2. One node joins {jn['nodes_before']} ({jn['engine']}, fsync={jn['fsync']}, {first['partitions']} "
        f"partitions, {jn['filesystem']}): {jn['keys']:,} keys of {jn['value_bytes']} B; median of "
        f"{len(jn['runs'])} run(s)",
        f"   load: {md['load_s']:.1f} s, {_rate(md['load_keys_per_s'])} keys/s (batches of {jn['batch_keys']} "
        f"straight to each owner, {jn['load_concurrency_per_node']} in flight per node)",
        f"   data before the join: {first['data_keys']:,} keys, {first['data_bytes'] / mb:.1f} MB of keys and values",
        f"   join, from {first['join_timed_from']} to the layout in force: {md['join_s']:.2f} s "
        f"(per run: {', '.join(format(r['join_s'], '.2f') for r in jn['runs'])}); the whole add_node call, "
        f"starting the node's process: {md['add_node_s']:.2f} s",
        f"   moved to the new node: {md['moved_keys']:,.0f} keys, {md['moved_bytes'] / mb:.1f} MB "
        f"({first['moved_partitions']} partitions); streamed {md['streamed_bytes'] / mb:.1f} MB (resends included)",
        f"   moves: {first['moves_started']} started, {first['moves_completed']} completed, "
        f"{first['moves_abandoned']} abandoned (first run); completed moves took {first['move_seconds_summed']:.1f} s "
        "summed (they overlap)",
        f"   minimum (1/6): {first['min_keys']:,.0f} keys, {first['min_bytes'] / mb:.1f} MB; moved / minimum: "
        f"keys {md['keys_over_min']:.3f}x, bytes {md['bytes_over_min']:.3f}x, streamed {md['streamed_over_min']:.3f}x",
        f"   rate: {md['moved_mb_per_s']:.2f} MB/s, {_rate(md['moved_keys_per_s'])} keys/s; disk sequential write "
        f"{md['disk_mb_per_s']:.0f} MB/s: {md['disk_ratio']:.4f}x the disk's rate",
        f"   after: records per node {', '.join(format(k, ',') for k in first['node_keys_after'])} "
        f"(sum {first['records_after']:,}: {'every key on one node' if jn['ok'] else 'KEYS MISSING OR DOUBLED'})",
    ]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    keys = make_keys(args.lookup_keys, random.Random(f"{args.seed}:keys"))
    lookups = measure_lookups(keys, args.runs, QUICK_MIN_TIMED_S if args.quick else MIN_TIMED_S, args.seed)
    join = None
    if args.join_runs > 0:
        timeout_s = QUICK_JOIN_TIMEOUT_S if args.quick else JOIN_TIMEOUT_S
        join = measure_join(args.join_runs, args.keys, args.value_bytes, args.load_concurrency, timeout_s)
    report: dict[str, Any] = rounded(
        {
            "bench": "partition_scale",
            "quick": args.quick,
            "runs": args.runs,
            "join_runs": args.join_runs,
            "seed": args.seed,
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "lookups": lookups,
            "join": join,
            "ok": join is None or join["ok"],
            "total_s": time.perf_counter() - started,
        }
    )
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of the lookup timings (medians are reported)")
    parser.add_argument("--join-runs", type=int, default=1, help="joins, each on a fresh cluster (0: none)")
    parser.add_argument("--keys", type=int, default=None, help=f"keys loaded before the join ({JOIN_KEYS:,})")
    parser.add_argument("--value-bytes", type=int, default=VALUE_BYTES)
    parser.add_argument("--lookup-keys", type=int, default=None, help=f"random keys looked up ({LOOKUP_KEYS:,})")
    parser.add_argument("--load-concurrency", type=int, default=LOAD_CONCURRENCY, help="batches in flight per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: 1 lookup run of {QUICK_LOOKUP_KEYS:,} keys, a join of {QUICK_JOIN_KEYS:,} keys",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.join_runs = 1, min(args.join_runs, 1)
    if args.keys is None:
        args.keys = QUICK_JOIN_KEYS if args.quick else JOIN_KEYS
    if args.lookup_keys is None:
        args.lookup_keys = QUICK_LOOKUP_KEYS if args.quick else LOOKUP_KEYS
    for name in ("runs", "keys", "value_bytes", "lookup_keys", "load_concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lookup_keys < 2 * MEMO_ENTRIES:
        parser.error(f"--lookup-keys must be at least {2 * MEMO_ENTRIES} (twice key_hash's memo)")
    if args.join_runs < 0:
        parser.error("--join-runs must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        report = run_bench(args)
    except (BenchError, ClusterError) as exc:
        print(f"bench/partition_scale.py: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(render(report))
        print()
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the ``with`` blocks: the node processes (in sessions of their own, so a signal to this
    # process's group does not reach them) are stopped and the temporary directory removed.
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
