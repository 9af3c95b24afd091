"""Bytes per key of MemoryStorage against a bare ``dict[str, bytes]`` holding the same keys and values.

Each structure is built in its own subprocess (16-byte keys, 100-byte values; the storage spreads keys
over partitions by the same hash a node uses) and measured the same way: ``tracemalloc`` (bytes Python
allocated while building, keys and values included) or ``rss`` (growth of the resident set). Prints one
JSON line and one human line; the target is a ratio of at most 2.0.

    python bench/memory_per_key.py --keys 1000000 [--partitions 64] [--method tracemalloc|rss]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

from kvstore.storage.base import Record
from kvstore.storage.memory import MemoryStorage
from partitioning.hash_partitioner import partition_for_key

TARGET_RATIO = 2.0
KEY_BYTES = 16
VALUE_BYTES = 100


def _key(i: int) -> str:
    return f"key:{i:0{KEY_BYTES - 4}d}"


def _value(i: int) -> bytes:
    # Distinct per key, so no value object is shared between keys.
    return (i.to_bytes(8, "big") * (VALUE_BYTES // 8 + 1))[:VALUE_BYTES]


def build_storage(keys: int, partitions: int) -> object:
    storage = MemoryStorage()
    for i in range(keys):
        key = _key(i)
        storage.write(partition_for_key(key, partitions), key, Record(_value(i), i + 1))
    return storage


def build_dict(keys: int, partitions: int) -> object:
    return {_key(i): _value(i) for i in range(keys)}


BUILDERS: dict[str, Callable[[int, int], object]] = {"storage": build_storage, "dict": build_dict}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(kind: str, keys: int, partitions: int, method: str) -> int:
    """Bytes held by the structure ``kind`` once built (run in a fresh process)."""
    build = BUILDERS[kind]
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        built = build(keys, partitions)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    else:
        before = _rss_bytes()
        built = build(keys, partitions)
        gc.collect()
        used = _rss_bytes() - before
    del built
    return used


def _measure_in_subprocess(kind: str, args: argparse.Namespace) -> int:
    command = [sys.executable, __file__, "--child", kind, "--keys", str(args.keys)]
    command += ["--partitions", str(args.partitions), "--method", args.method]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--method", choices=("tracemalloc", "rss"), default="tracemalloc")
    parser.add_argument("--child", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keys < 1 or args.partitions < 1:
        parser.error("--keys and --partitions must be positive")
    if args.child:
        print(measure(args.child, args.keys, args.partitions, args.method))
        return 0
    storage_bytes = _measure_in_subprocess("storage", args)
    dict_bytes = _measure_in_subprocess("dict", args)
    ratio = storage_bytes / dict_bytes
    result = {
        "bench": "memory_per_key",
        "method": args.method,
        "keys": args.keys,
        "partitions": args.partitions,
        "key_bytes": KEY_BYTES,
        "value_bytes": VALUE_BYTES,
        "storage_bytes_per_key": round(storage_bytes / args.keys, 1),
        "dict_bytes_per_key": round(dict_bytes / args.keys, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
    }
    print(json.dumps(result))
    print(
        f"MemoryStorage {result['storage_bytes_per_key']} B/key vs dict {result['dict_bytes_per_key']} B/key "
        f"({args.method}, {args.keys} keys, {args.partitions} partitions): {ratio:.2f}x, target <= {TARGET_RATIO}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
