"""The pure partitioning modules: lookup speed against a dict, key spread on the ring, movement on a join.

1. Lookups per second at 10,000 partitions, each beside the reference: a plain dict lookup ``d[key]`` in a
   dict of every key of the set -> its partition (precomputed, so the reference does no hashing at all:
   it is the floor any placement could reach), over the same keys, in the same run. Subjects:

   - ``HashRing.owner(key)``, ``preference_list(key, 1)`` and ``preference_list(key, 3)`` on a ring of
     40 nodes x 250 vnodes = 10,000 tokens (each is ``key_hash``, a bisect over the token positions and,
     for preference lists, an index into the table precomputed on first use, built before timing);
   - ``RangeMap.partition_for_key(key)`` on a map of 10,000 ranges, its 9,999 split points drawn from
     sorted random keys of the same shape (a bisect over strings; no hash);
   - hash placement as the node does it: ``owners[key_hash(key) % 10_000]``, a tuple index into the
     preferred owner of each of 10,000 partitions (``assign_partitions`` on the same ring);
   - ``key_hash(key)`` alone, the share of the above that is blake2b.

   Keys: ``--keys`` (100,000) random 16-byte keys (16 hex characters, seeded). ``key_hash`` keeps a memo of
   the last 4,096 keys it hashed, emptied when full (partitioning/hash_partitioner.py). Every pass over the
   key set hashes 100,000 distinct keys, so no key is still in the memo when it comes round again: the
   "cold" rows are lookups that all miss the memo and pay blake2b. The "warm" rows repeat a working set
   of 1,000 keys (inside the memo, after one untimed pass), as a node serving a few hot keys does; the
   dict reference of a warm row runs over the same 1,000 keys.

   Each run times every subject right after its reference (the order of the subjects rotates from run to
   run), a timing repeating whole passes over its keys until it has taken ``MIN_TIMED_S``. Figures: the
   median over ``--runs`` runs of ns per lookup and lookups/s, and the ratio subject / dict in lookups/s
   as the median of the per-run ratios (by wall time, and by CPU time beside it: the machine is shared,
   and a gap between the two is load from elsewhere).

2. Key spread on the ring: 5 nodes joined one after another (``HashRing.build``) with 1, 16, 64 and 256
   vnodes each; the largest node's share over the mean share, of the key set (owner of each key), of the
   ring itself (``ownership()``, exact), and of P = 64 and P = 1024 partitions placed by
   ``assign_partitions`` (preferred owners). Acceptance: at most 1.25x for the keys at 16 vnodes.

3. Movement on a join: k nodes of 16 vnodes, then one more of 16: the fraction of the key set whose owner
   changes (ideal 1/(k+1)) for k = 3, 5, 9, and the keys that moved between two old nodes (must be none);
   also the preferred owners of P = 1024 partitions. Then ``rebalance.balance`` from 5 to 6 nodes, 64
   partitions x 3 replicas (192 replicas; the new node's fair share is 32 = 1/6): replicas moved
   (``plan(...).copies``) from a round-robin layout at tolerance 0.1 (the least it can move is 29, the
   fewest that put the new node within 10% of 32) and 0 (least 32), and from the ring's layout of 5 x 16
   vnodes; beside it, what the ring itself moves when the 6th node joins and the 64 partitions are placed
   again with ``assign_partitions``.

Exits 1 if an acceptance check fails: a spread above 1.25x at 16 vnodes, or a key moving between two old
nodes on a join. Prints the report, then one JSON line (``--json``: the JSON line only).

    python bench/partition_placement.py [--runs 5] [--quick] [--json] [--keys 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from report_format import rounded

from partitioning import hash_partitioner
from partitioning.hash_partitioner import key_hash
from partitioning.hash_ring import HashRing, assign_partitions
from partitioning.partition_map import PartitionMap
from partitioning.range_map import RangeMap
from partitioning.rebalance import balance, plan

PARTITIONS = 10_000
RING_NODES = 40
RING_VNODES = 250  # 40 x 250 = 10,000 tokens
KEY_BYTES = 16
WARM_KEYS = 1_000
FULL_KEYS = 100_000
QUICK_KEYS = 20_000
MIN_TIMED_S = 0.1
QUICK_MIN_TIMED_S = 0.01
# key_hash remembers this many recent keys (emptied when full); the lookup key sets must be well beyond it.
MEMO_ENTRIES = hash_partitioner._MEMO_ENTRIES

SPREAD_NODES = 5
SPREAD_VNODES = (1, 16, 64, 256)
SPREAD_PARTITIONS = (64, 1024)
SPREAD_LIMIT = 1.25
SPREAD_LIMIT_VNODES = 16

JOIN_OLD_NODES = (3, 5, 9)
JOIN_VNODES = 16
JOIN_PARTITIONS = 1024

REBALANCE_NODES = 5
REBALANCE_PARTITIONS = 64
REBALANCE_REPLICAS = 3

LookupPass = Callable[[list[str]], None]


# --- inputs


def make_keys(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct random keys of ``KEY_BYTES`` hex characters."""
    keys: dict[str, None] = {}
    while len(keys) < count:
        keys[f"{rng.getrandbits(KEY_BYTES * 4):0{KEY_BYTES}x}"] = None
    return list(keys)


def lookup_ring() -> HashRing:
    return HashRing.build((f"node-{i:02d}", RING_VNODES) for i in range(1, RING_NODES + 1))


def lookup_range_map(rng: random.Random) -> RangeMap:
    split_points = tuple(sorted(make_keys(PARTITIONS - 1, rng)))
    return RangeMap(split_points, tuple(range(PARTITIONS)), PARTITIONS)


# --- 1. lookups


def ring_owner(ring: HashRing) -> LookupPass:
    def run(keys: list[str]) -> None:
        owner = ring.owner
        for key in keys:
            owner(key)

    return run


def _ring_preference(ring: HashRing, n: int) -> LookupPass:
    def run(keys: list[str]) -> None:
        preference_list = ring.preference_list
        for key in keys:
            preference_list(key, n)

    return run


def range_lookup(range_map: RangeMap) -> LookupPass:
    def run(keys: list[str]) -> None:
        partition_for_key = range_map.partition_for_key
        for key in keys:
            partition_for_key(key)

    return run


def hash_placement(owners: tuple[str, ...]) -> LookupPass:
    def run(keys: list[str]) -> None:
        h, count = key_hash, len(owners)
        for key in keys:
            owners[h(key) % count]

    return run


def _hash_alone(keys: list[str]) -> None:
    h = key_hash
    for key in keys:
        h(key)


def dict_lookup(table: dict[str, Any]) -> LookupPass:
    def run(keys: list[str]) -> None:
        for key in keys:
            table[key]

    return run


def timed(run: LookupPass, keys: list[str], min_s: float) -> tuple[float, float]:
    """Wall and CPU ns per lookup over whole passes of ``keys``, repeated until ``min_s`` has passed."""
    passes = 0
    gc.collect()
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    elapsed = 0.0
    while passes == 0 or elapsed < min_s:
        run(keys)
        passes += 1
        elapsed = time.perf_counter() - wall_started
    cpu = time.process_time() - cpu_started
    lookups = passes * len(keys)
    return elapsed / lookups * 1e9, cpu / lookups * 1e9


def lookup_subjects(
    ring: HashRing, range_map: RangeMap, owners: tuple[str, ...]
) -> list[tuple[str, str, bool, LookupPass]]:
    """(name, label, uses key_hash, pass) of every subject; each is timed cold and, if hashed, warm."""
    return [
        ("ring_owner", f"HashRing.owner, {len(ring.tokens):,} tokens", True, ring_owner(ring)),
        ("ring_preference_1", "HashRing.preference_list(key, 1)", True, _ring_preference(ring, 1)),
        ("ring_preference_3", "HashRing.preference_list(key, 3)", True, _ring_preference(ring, 3)),
        ("range_map", f"RangeMap.partition_for_key, {range_map.range_count:,} ranges", False, range_lookup(range_map)),
        ("hash_placement", f"owners[key_hash(key) % {len(owners):,}]", True, hash_placement(owners)),
        ("key_hash", "key_hash(key) alone", True, _hash_alone),
    ]


def measure_lookups(keys: list[str], runs: int, min_s: float, seed: int) -> dict[str, Any]:
    if len(keys) < 2 * MEMO_ENTRIES:
        raise ValueError(f"{len(keys)} keys: key_hash's memo would hold some of them, use {2 * MEMO_ENTRIES}+")
    started = time.perf_counter()
    ring = lookup_ring()
    ring_build_s = time.perf_counter() - started
    started = time.perf_counter()
    range_map = lookup_range_map(random.Random(f"{seed}:split-points"))
    range_build_s = time.perf_counter() - started
    owners = tuple(replicas[0] for replicas in assign_partitions(ring, PARTITIONS, 1))
    table = {key: key_hash(key) % PARTITIONS for key in keys}
    reference = dict_lookup(table)
    warm = keys[:WARM_KEYS]
    cases: list[tuple[str, str, str, list[str], LookupPass]] = []
    for name, label, hashed, run in lookup_subjects(ring, range_map, owners):
        run(keys[:10])  # builds the ring's preference tables before any timing
        cases.append((f"{name}_cold", label, "cold", keys, run))
        if hashed:
            cases.append((f"{name}_warm", label, "warm", warm, run))
    samples: dict[str, dict[str, list[float]]] = {
        case[0]: {k: [] for k in ("ns", "cpu_ns", "ref_ns", "ref_cpu_ns")} for case in cases
    }
    for r in range(runs):
        shift = r % len(cases)
        for name, _, temperature, case_keys, run in cases[shift:] + cases[:shift]:
            ref_ns, ref_cpu_ns = timed(reference, case_keys, min_s)
            if temperature == "warm":
                run(case_keys)  # every key into the memo, untimed
            ns, cpu_ns = timed(run, case_keys, min_s)
            s = samples[name]
            s["ns"].append(ns)
            s["cpu_ns"].append(cpu_ns)
            s["ref_ns"].append(ref_ns)
            s["ref_cpu_ns"].append(ref_cpu_ns)
    rows = []
    for name, label, temperature, case_keys, _ in cases:
        s = samples[name]
        ratios = [ref / ns for ref, ns in zip(s["ref_ns"], s["ns"], strict=True)]
        cpu_ratios = [ref / ns for ref, ns in zip(s["ref_cpu_ns"], s["cpu_ns"], strict=True)]
        ns, ref_ns = statistics.median(s["ns"]), statistics.median(s["ref_ns"])
        rows.append(
            {
                "name": name,
                "label": label,
                "keys": temperature,
                "key_count": len(case_keys),
                "ns_per_lookup": ns,
                "ns_min": min(s["ns"]),
                "ns_max": max(s["ns"]),
                "lookups_per_s": 1e9 / ns,
                "dict_ns_per_lookup": ref_ns,
                "dict_lookups_per_s": 1e9 / ref_ns,
                "ratio": statistics.median(ratios),
                "ratio_runs": ratios,
                "ratio_cpu": statistics.median(cpu_ratios),
            }
        )
    return {
        "partitions": PARTITIONS,
        "ring_nodes": RING_NODES,
        "ring_vnodes": RING_VNODES,
        "ring_tokens": len(ring.tokens),
        "ring_build_s": ring_build_s,
        "ranges": range_map.range_count,
        "range_map_build_s": range_build_s,
        "reference": f"d[key], a dict of all {len(keys):,} keys -> partition, precomputed",
        "memo_entries": MEMO_ENTRIES,
        "warm_keys": len(warm),
        "min_timed_s": min_s,
        "rows": rows,
    }


# --- 2. spread


def _over_mean(counts: Counter[str], nodes: Sequence[str]) -> tuple[float, float]:
    """The largest and the smallest node's count over the mean count (a node with none counts 0)."""
    mean = sum(counts.values()) / len(nodes)
    return max(counts[n] for n in nodes) / mean, min(counts[n] for n in nodes) / mean


def measure_spread(hashes: list[int]) -> dict[str, Any]:
    rows = []
    for vnodes in SPREAD_VNODES:
        ring = HashRing.build((f"node-{i}", vnodes) for i in range(1, SPREAD_NODES + 1))
        owner_at = ring.owner_at
        keys = Counter(owner_at(h) for h in hashes)
        ownership = ring.ownership()
        partitions = {
            str(p): _over_mean(Counter(r[0] for r in assign_partitions(ring, p, 1)), ring.nodes)
            for p in SPREAD_PARTITIONS
        }
        rows.append(
            {
                "vnodes": vnodes,
                "keys_largest_over_mean": _over_mean(keys, ring.nodes)[0],
                "keys_smallest_over_mean": _over_mean(keys, ring.nodes)[1],
                "ring_largest_over_mean": max(ownership.values()) * len(ring.nodes),
                "partitions_largest_over_mean": {p: largest for p, (largest, _) in partitions.items()},
                "partitions_smallest_over_mean": {p: smallest for p, (_, smallest) in partitions.items()},
            }
        )
    return {"nodes": SPREAD_NODES, "keys": len(hashes), "partitions": list(SPREAD_PARTITIONS), "rows": rows}


# --- 3. movement


def _changed_replicas(before: dict[int, tuple[str, ...]], after: dict[int, tuple[str, ...]]) -> Counter[str]:
    """Per node, the replicas it gains from ``before`` to ``after``."""
    gained = Counter[str]()
    for p, nodes in before.items():
        gained.update(set(after[p]) - set(nodes))
    return gained


def _rebalance_row(name: str, current: dict[int, tuple[str, ...]], tolerance: float) -> dict[str, Any]:
    nodes = {f"n{i}": 1.0 for i in range(REBALANCE_NODES + 1)}
    joiner = f"n{REBALANCE_NODES}"
    started = time.perf_counter()
    target = balance(current, nodes, REBALANCE_REPLICAS, tolerance=tolerance)
    balance_s = time.perf_counter() - started
    copies = plan(current, target).copies
    total = REBALANCE_PARTITIONS * REBALANCE_REPLICAS
    fair = total / len(nodes)
    least = math.ceil(fair * (1 - tolerance) - 1e-9)  # what puts the new node within tolerance of its share
    loads = Counter(n for replicas in target.values() for n in replicas)
    return {
        "start": name,
        "tolerance": tolerance,
        "replicas": total,
        "moved": len(copies),
        "moved_fraction": len(copies) / total,
        "moved_to_new_node": sum(c.target == joiner for c in copies),
        "least_within_tolerance": least,
        "ideal_fraction": 1 / len(nodes),
        "moved_over_ideal": len(copies) / fair,
        "loads": [loads[n] for n in nodes],
        "balance_ms": balance_s * 1000,
    }


def measure_rebalance() -> dict[str, Any]:
    ids = tuple(f"n{i}" for i in range(REBALANCE_NODES))
    round_robin = dict(enumerate(PartitionMap.round_robin(ids, REBALANCE_PARTITIONS, REBALANCE_REPLICAS).replicas))
    ring = HashRing.build((n, JOIN_VNODES) for n in ids)
    from_ring = dict(enumerate(assign_partitions(ring, REBALANCE_PARTITIONS, REBALANCE_REPLICAS)))
    rows = [
        _rebalance_row("round-robin", round_robin, 0.1),
        _rebalance_row("round-robin", round_robin, 0.0),
        _rebalance_row(f"ring {REBALANCE_NODES}x{JOIN_VNODES}", from_ring, 0.1),
    ]
    joined = ring.with_node(f"n{REBALANCE_NODES}", JOIN_VNODES)
    after = dict(enumerate(assign_partitions(joined, REBALANCE_PARTITIONS, REBALANCE_REPLICAS)))
    gained = _changed_replicas(from_ring, after)
    total = REBALANCE_PARTITIONS * REBALANCE_REPLICAS
    ring_join = {
        "moved": sum(gained.values()),
        "moved_fraction": sum(gained.values()) / total,
        "moved_to_new_node": gained[f"n{REBALANCE_NODES}"],
        "loads_before": [Counter(n for r in from_ring.values() for n in r)[n] for n in ids],
        "loads": [Counter(n for r in after.values() for n in r)[n] for n in sorted(joined.nodes)],
    }
    return {
        "nodes_before": REBALANCE_NODES,
        "partitions": REBALANCE_PARTITIONS,
        "replicas": REBALANCE_REPLICAS,
        "rows": rows,
        "ring_join": ring_join,
    }


def measure_movement(hashes: list[int]) -> dict[str, Any]:
    rows = []
    for k in JOIN_OLD_NODES:
        old = HashRing.build((f"node-{i}", JOIN_VNODES) for i in range(1, k + 1))
        new = old.with_node("joiner", JOIN_VNODES)
        moved = between_old = 0
        for h in hashes:
            a, b = old.owner_at(h), new.owner_at(h)
            if a != b:
                moved += 1
                between_old += b != "joiner"
        before = assign_partitions(old, JOIN_PARTITIONS, 1)
        after = assign_partitions(new, JOIN_PARTITIONS, 1)
        moved_p = sum(a[0] != b[0] for a, b in zip(before, after, strict=True))
        between_old_p = sum(a[0] != b[0] and b[0] != "joiner" for a, b in zip(before, after, strict=True))
        ideal = 1 / (k + 1)
        rows.append(
            {
                "old_nodes": k,
                "ideal_fraction": ideal,
                "keys_moved_fraction": moved / len(hashes),
                "keys_moved_over_ideal": moved / len(hashes) / ideal,
                "keys_moved_between_old_nodes": between_old,
                "partitions_moved_fraction": moved_p / JOIN_PARTITIONS,
                "partitions_moved_between_old_nodes": between_old_p,
                "new_node_ring_share": new.ownership()["joiner"],
            }
        )
    return {
        "vnodes": JOIN_VNODES,
        "keys": len(hashes),
        "partitions": JOIN_PARTITIONS,
        "rows": rows,
        "rebalance": measure_rebalance(),
    }


# --- checks, report


def evaluate_checks(spread: dict[str, Any], movement: dict[str, Any]) -> dict[str, Any]:
    at_limit = next(r for r in spread["rows"] if r["vnodes"] == SPREAD_LIMIT_VNODES)
    between = sum(r["keys_moved_between_old_nodes"] for r in movement["rows"])
    spread_ok = at_limit["keys_largest_over_mean"] <= SPREAD_LIMIT
    return {
        "spread_vnodes": SPREAD_LIMIT_VNODES,
        "spread": at_limit["keys_largest_over_mean"],
        "spread_limit": SPREAD_LIMIT,
        "spread_ok": spread_ok,
        "keys_moved_between_old_nodes": between,
        "movement_ok": between == 0,
        "ok": spread_ok and between == 0,
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    keys = make_keys(args.keys, random.Random(f"{args.seed}:keys"))
    min_s = QUICK_MIN_TIMED_S if args.quick else MIN_TIMED_S
    lookups = measure_lookups(keys, args.runs, min_s, args.seed)
    hashes = [key_hash(key) for key in keys]
    spread = measure_spread(hashes)
    movement = measure_movement(hashes)
    report: dict[str, Any] = rounded(
        {
            "bench": "partition_placement",
            "runs": args.runs,
            "quick": args.quick,
            "seed": args.seed,
            "keys": len(keys),
            "key_bytes": KEY_BYTES,
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
            },
            "lookups": lookups,
            "spread": spread,
            "movement": movement,
            "checks": evaluate_checks(spread, movement),
            "total_s": time.perf_counter() - started,
        }
    )
    return report


def _rate(per_s: float) -> str:
    return f"{per_s / 1e6:.2f}M" if per_s >= 1e6 else f"{per_s / 1e3:,.0f}k"


def render(report: dict[str, Any]) -> str:
    m, lk, sp, mv, ck = (report[k] for k in ("machine", "lookups", "spread", "movement", "checks"))
    lines = [
        f"bench/partition_placement.py: median of {report['runs']} run(s){' (quick)' if report['quick'] else ''}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}; {report['keys']:,} random {report['key_bytes']}-byte keys "
        f"(seed {report['seed']}); {report['total_s']:.1f} s",
        "",
        f"1. Lookups at {lk['partitions']:,} partitions: ring {lk['ring_nodes']} nodes x {lk['ring_vnodes']} vnodes "
        f"= {lk['ring_tokens']:,} tokens (built in {lk['ring_build_s']:.2f} s), range map of {lk['ranges']:,} ranges "
        f"(built in {lk['range_map_build_s']:.2f} s)",
        f"   reference: {lk['reference']}, timed just before each subject over the same keys",
        f"   cold: all {report['keys']:,} keys, every key_hash misses its {lk['memo_entries']:,}-entry memo; "
        f"warm: {lk['warm_keys']:,} keys, all in the memo",
        f"{'subject':<42} {'keys':<5} {'ns/lookup':>9} {'lookups/s':>10} {'dict ns':>8} {'dict/s':>8} "
        f"{'subject/dict':>12} {'(cpu)':>7}   per run",
    ]
    for r in lk["rows"]:
        lines.append(
            f"{r['label']:<42} {r['keys']:<5} {r['ns_per_lookup']:>9,.0f} {_rate(r['lookups_per_s']):>10} "
            f"{r['dict_ns_per_lookup']:>8.1f} {_rate(r['dict_lookups_per_s']):>8} {r['ratio']:>11.4f}x "
            f"{r['ratio_cpu']:>6.4f}x   {', '.join(f'{x:.4f}' for x in r['ratio_runs'])}"
            f"   (ns {r['ns_min']:,.0f}..{r['ns_max']:,.0f})"
        )
    parts = sp["partitions"]
    lines += [
        "",
        f"2. Spread on the ring: {sp['nodes']} nodes joined one after another; largest node's share / mean share "
        "(smallest's in brackets)",
        f"{'vnodes/node':>11} {'keys (' + format(sp['keys'], ',') + ')':>18} {'ring (exact)':>13} "
        + " ".join(f"{'P=' + str(p) + ' (assign_partitions)':>26}" for p in parts),
    ]
    for r in sp["rows"]:
        lines.append(
            f"{r['vnodes']:>11} {r['keys_largest_over_mean']:>9.3f}x ({r['keys_smallest_over_mean']:.3f}x) "
            f"{r['ring_largest_over_mean']:>12.3f}x "
            + " ".join(
                f"{r['partitions_largest_over_mean'][q]:>17.3f}x ({r['partitions_smallest_over_mean'][q]:.3f}x)"
                for q in map(str, parts)
            )
        )
    spread_verdict = "met" if ck["spread_ok"] else "NOT met"
    skewed = [
        f"P={p} at {r['vnodes']} vnodes"
        for r in sp["rows"]
        for p in parts
        if r["vnodes"] > 1 and r["partitions_largest_over_mean"][str(p)] > ck["spread_limit"]
    ]
    lines.append(
        f"   acceptance: keys <= {ck['spread_limit']}x at {ck['spread_vnodes']} vnodes: "
        f"{ck['spread']:.3f}x, {spread_verdict}"
    )
    if skewed:
        lines.append(
            f"   note (not an acceptance check): partitions spread beyond {ck['spread_limit']}x with more than one "
            f"vnode: {', '.join(skewed)}"
        )
    lines += [
        "",
        f"3. Movement on a join: k nodes of {mv['vnodes']} vnodes + 1 node of {mv['vnodes']}; {mv['keys']:,} keys, "
        f"P={mv['partitions']} preferred owners",
        f"{'k':>3} {'ideal 1/(k+1)':>13} {'keys moved':>10} {'/ ideal':>8} {'between old':>11} "
        f"{'partitions moved':>16} {'between old':>11} {'new node ring share':>19}",
    ]
    for r in mv["rows"]:
        lines.append(
            f"{r['old_nodes']:>3} {r['ideal_fraction']:>13.4f} {r['keys_moved_fraction']:>10.4f} "
            f"{r['keys_moved_over_ideal']:>7.3f}x {r['keys_moved_between_old_nodes']:>11} "
            f"{r['partitions_moved_fraction']:>16.4f} {r['partitions_moved_between_old_nodes']:>11} "
            f"{r['new_node_ring_share']:>19.4f}"
        )
    movement_verdict = "met" if ck["movement_ok"] else "NOT met"
    rb = mv["rebalance"]
    lines += [
        f"   acceptance: no key moves between old nodes: {ck['keys_moved_between_old_nodes']} moved, "
        f"{movement_verdict}",
        "",
        f"   rebalance.balance, {rb['nodes_before']} -> {rb['nodes_before'] + 1} nodes, {rb['partitions']} partitions "
        f"x {rb['replicas']} replicas ({rb['partitions'] * rb['replicas']} replicas, 1/6 = "
        f"{rb['partitions'] * rb['replicas'] / (rb['nodes_before'] + 1):.0f})",
        f"{'start':>15} {'tolerance':>9} {'moved':>5} {'fraction':>8} {'/ (1/6)':>8} {'to new node':>11} "
        f"{'least in tol.':>13} {'balance ms':>10}   loads n0..n{rb['nodes_before']}",
    ]
    for r in rb["rows"]:
        lines.append(
            f"{r['start']:>15} {r['tolerance']:>9} {r['moved']:>5} {r['moved_fraction']:>8.4f} "
            f"{r['moved_over_ideal']:>7.3f}x {r['moved_to_new_node']:>11} {r['least_within_tolerance']:>13} "
            f"{r['balance_ms']:>10.2f}   {', '.join(map(str, r['loads']))}"
        )
    rj = rb["ring_join"]
    lines.append(
        f"   the ring alone (assign_partitions before and after the join, no balance): {rj['moved']} replicas moved "
        f"({rj['moved_fraction']:.4f}), {rj['moved_to_new_node']} to the new node; loads "
        f"{', '.join(map(str, rj['loads_before']))} -> {', '.join(map(str, rj['loads']))}"
    )
    lines += ["", f"acceptance checks: {'all met' if ck['ok'] else 'FAILED'}"]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of the lookup timings; medians are reported")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_KEYS:,} keys, 1 run, short timings")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--keys", type=int, default=None, help=f"random keys (default {FULL_KEYS:,})")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.keys is None:
        args.keys = QUICK_KEYS if args.quick else FULL_KEYS
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.keys < 2 * MEMO_ENTRIES:
        parser.error(f"--keys must be at least {2 * MEMO_ENTRIES} (twice key_hash's memo)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    report = run_bench(args)
    if not args.json:
        print(render(report))
        print()
    print(json.dumps(report))
    return 0 if report["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
