"""Moving partitions between two node processes: time and bytes, against the disk's sequential write rate.

Two nodes (SQLite engine, ``fsync = "batch"``, data in a temporary directory) are loaded with ``--keys`` keys of
``--value-bytes`` bytes; then every partition the first node owns is moved to the second through
``POST /admin/moves`` (at most four moves run at once on a node), and the bench waits until the second node's
map shows them all there. Reported: the wall time of the moves, the data they carried (keys and values of
the moved partitions, from ``/cluster``'s partition stats before the move), the bytes the source streamed
(``kvstore_move_bytes_total``: resends included), the rate in MB/s, and that rate as a ratio of the disk's
sequential write rate measured in the same run (a 128 MiB file written in 1 MiB blocks, then fsynced) — the
ceiling for a target writing what it receives. A sample of the moved keys is read back from the second node.
Medians of ``--runs`` runs, each on fresh nodes.

This measures a move between two nodes; a join (issue 13's benchmark: one node joining a 5-node cluster of
1M keys) adds the membership change to it, which is not built yet.

    python bench/partition_move.py [--runs 3] [--keys 200000] [--value-bytes 100] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from http_node import BenchError, start_server
from report_format import filesystem_of, rounded

from kvstore.client import AsyncClient
from kvstore.cluster import pick_free_ports
from kvstore.config import ClusterConfig, NodeAddress, StorageConfig
from kvstore.messages import Found
from kvstore.server.routes_admin import ADMIN_MOVES_PATH

PARTITIONS = 16
BATCH_KEYS = 1000
DISK_PROBE_BYTES = 128 << 20
DISK_BLOCK_BYTES = 1 << 20
POLL_S = 0.05
MOVE_TIMEOUT_S = 600.0
SAMPLE_KEYS = 200
SECRET = "bench-moves"


@dataclass(frozen=True)
class RunFigures:
    keys: int
    partitions_moved: int
    moved_data_bytes: int
    streamed_bytes: int
    move_s: float
    moved_mb_per_s: float
    disk_mb_per_s: float
    ratio: float


def disk_write_rate(directory: Path) -> float:
    """Sequential write rate of ``directory``'s disk in MB/s: 128 MiB in 1 MiB blocks, then fsync."""
    path = directory / "disk-probe"
    block = os.urandom(DISK_BLOCK_BYTES)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(DISK_PROBE_BYTES // DISK_BLOCK_BYTES):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return DISK_PROBE_BYTES / elapsed / 1e6


def start_nodes(stack: contextlib.ExitStack, work_dir: Path) -> ClusterConfig:
    ports = pick_free_ports(2)
    config = ClusterConfig(
        nodes=tuple(NodeAddress(f"n{i + 1}", "127.0.0.1", port) for i, port in enumerate(ports)),
        name="bench-moves",
        secret=SECRET,
        partitions=PARTITIONS,
        storage=StorageConfig(engine="sqlite", fsync="batch", data_dir=str(work_dir / "data")),
        # The rebalancer off: it would start moving n1's partitions back while the bench reads them on n2.
        rebalance=False,
    )
    config_path = work_dir / "cluster.toml"
    config.save(config_path)
    for address in config.nodes:
        command = [sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", address.node_id]
        start_server(stack, address.node_id, command, address.port, work_dir)
    return config


def key_name(index: int) -> str:
    return f"move-{index:08d}"


async def load(urls: list[str], keys: int, value: bytes) -> None:
    async with AsyncClient(urls) as client:
        for start in range(0, keys, BATCH_KEYS):
            items = [(key_name(i), value) for i in range(start, min(start + BATCH_KEYS, keys))]
            results = await client.batch_put(items)
            failed = [r for r in results if not hasattr(r, "version")]
            if failed:
                raise BenchError(f"loading failed: {failed[0]}")


async def cluster_doc(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/cluster") as response:
        doc: dict[str, Any] = await response.json()
        return doc


async def move_bytes_sent(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("kvstore_move_bytes_total "):
                return int(float(line.split()[1]))
    return 0


async def move_all(config: ClusterConfig, keys: int, value_bytes: int, work_dir: Path) -> RunFigures:
    source, target = (address.url for address in config.nodes)
    await load([source, target], keys, b"v" * value_bytes)
    async with aiohttp.ClientSession() as http:
        before = await cluster_doc(http, source)
        owned = [p for p, replicas in enumerate(before["partition_map"]["replicas"]) if replicas[0] == "n1"]
        sizes = {s["partition"]: s["bytes"] for s in before["partition_stats"]}
        moved_data = sum(sizes.get(p, 0) for p in owned)
        disk = disk_write_rate(work_dir)
        headers = {"Authorization": f"Bearer {SECRET}"}
        started = time.perf_counter()
        remaining = set(owned)
        while remaining:
            if time.perf_counter() - started > MOVE_TIMEOUT_S:
                raise BenchError(f"partitions {sorted(remaining)} did not move within {MOVE_TIMEOUT_S:.0f} s")
            for partition in sorted(remaining):
                # A move already running, or a node at its four, answers started: false; asking again is harmless.
                body = {"partition": partition, "target": "n2"}
                async with http.post(source + ADMIN_MOVES_PATH, json=body, headers=headers) as response:
                    await response.read()
            await asyncio.sleep(POLL_S)
            replicas = (await cluster_doc(http, target))["partition_map"]["replicas"]
            remaining = {p for p in remaining if replicas[p][0] != "n2"}
        move_s = time.perf_counter() - started
        streamed = await move_bytes_sent(http, source)
    async with AsyncClient([target], route_by_map=False) as reader:
        step = max(keys // SAMPLE_KEYS, 1)
        for index in range(0, keys, step):
            found = await reader.get(key_name(index))
            if not isinstance(found, Found) or len(found.value) != value_bytes:
                raise BenchError(f"{key_name(index)} reads {found!r} after the moves")
    rate = moved_data / move_s / 1e6
    return RunFigures(keys, len(owned), moved_data, streamed, move_s, rate, disk, rate / disk)


def run_once(keys: int, value_bytes: int) -> RunFigures:
    with tempfile.TemporaryDirectory(prefix="kv-move-") as tmp, contextlib.ExitStack() as stack:
        work_dir = Path(tmp)
        config = start_nodes(stack, work_dir)
        return asyncio.run(move_all(config, keys, value_bytes, work_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="one run of 5,000 keys")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    runs, keys = (1, 5_000) if args.quick else (args.runs, args.keys)
    try:
        figures = [run_once(keys, args.value_bytes) for _ in range(runs)]
    except BenchError as exc:
        print(f"bench/partition_move.py: {exc}", file=sys.stderr)
        return 1
    median = {
        name: statistics.median(getattr(f, name) for f in figures)
        for name in ("move_s", "moved_mb_per_s", "disk_mb_per_s", "ratio", "moved_data_bytes", "streamed_bytes")
    }
    report = {
        "bench": "partition_move",
        "runs": [asdict(f) for f in figures],
        "median": {k: rounded(v) for k, v in median.items()},
        "keys": keys,
        "value_bytes": args.value_bytes,
        "partitions": PARTITIONS,
        "filesystem": filesystem_of(Path(tempfile.gettempdir())),
    }
    if not args.json:
        first = figures[0]
        print(
            f"bench/partition_move.py: 2 nodes (sqlite, fsync=batch), {keys:,} keys of {args.value_bytes} B, "
            f"{PARTITIONS} partitions; {first.partitions_moved} partitions moved n1 -> n2; median of {runs} run(s)"
        )
        print(
            f"  moves took {median['move_s']:.2f} s for {median['moved_data_bytes'] / 1e6:.1f} MB of keys and values "
            f"({median['streamed_bytes'] / 1e6:.1f} MB streamed, resends included): "
            f"{median['moved_mb_per_s']:.2f} MB/s"
        )
        print(
            f"  disk sequential write {median['disk_mb_per_s']:.0f} MB/s: moves run at "
            f"{median['ratio']:.4f}x the disk's rate (per run: {', '.join(f'{f.ratio:.4f}' for f in figures)})"
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
