"""SqliteStorage write throughput and recovery time, each figure against a reference measured in the same run.

1. Durable writes (``fsync = "always"``). Writes/s of ``SqliteStorage`` when every sync covers 1 write and
   when every sync covers 100 (group commit), 100-byte values, 16-byte keys cycling over 10,000 keys in 64
   partitions. A write is what a ``single``-mode write command does to storage: ``write`` of the record,
   versioned with the partition's next applied index, and ``set_applied_index`` (the in-memory state, on a
   node's loop thread), plus its share of ``sync()`` (``prepare_sync``, the job's ``run``,
   ``complete_sync``; the job reduces its events to the last change per record and per partition, computes
   the rows' CRC-32 checksums, appends the record changes to the journal table and upserts the partition
   rows as one transaction, folding the journal into the records table in SQL once it holds 10,000 rows;
   a node runs jobs on a worker thread).
   References, on the same directory: the disk's raw fsync
   ceiling (a loop of 4 KiB ``os.write`` + ``os.fdatasync`` appending to a plain file, syncs/s; appending
   makes each fdatasync commit the new file size too, so it is a rough ceiling, not a hard one), and raw
   ``sqlite3`` in WAL mode with ``synchronous=FULL`` and exclusive locking (as the storage opens its file)
   inserting the same keys and values into a plain table, one transaction per group (rows/s). Ratios:
   storage syncs/s over raw fsyncs/s, storage writes/s over raw SQLite rows/s.
2. CPU cost of the same path with ``fsync = "never"`` (``synchronous=OFF``: no fsync at all, so the figure
   is the Python and SQLite work per write, checksums included), groups of 1 and 100, against raw
   ``sqlite3`` with ``synchronous=OFF`` inserting the same rows in the same transaction sizes. The time
   spent in ``put`` (loop thread) is reported apart from the sync path, and the CRC-32 of a log row alone
   is timed too.
3. Recovery. Opening a ``SqliteStorage`` that holds 100,000 records plus 5,000 replication log entries
   (100 bytes each, over 64 partitions) and, as a crash leaves it, 9,999 record changes in the journal not
   yet folded (the most a sync leaves there): lock, WAL scan, ``PRAGMA quick_check``, then every row read,
   its checksum verified, the journal replayed over the records, each log's and the journal's continuity
   checked and the in-memory state rebuilt. Reference: a plain ``sqlite3`` connection running
   ``SELECT *`` on the records, journal and log_entries tables of the same file, fetching every row. The
   file is in the page cache for both (it was just written; the benchmark cannot drop caches).
   ``quick_check`` alone is timed as well.
4. Log store (``fsync = "always"``). Appends/s to the per-partition replication logs when every sync
   (one fsync) covers a group of 1, 16 or 128 appends, each one 100-byte entry, spread round-robin over 8
   partitions, as a replication protocol appends and syncs before acknowledging. Reference: the raw fsync
   ceiling of section 1, from the same run; ratio: storage syncs/s over raw fsyncs/s.

Every measurement starts from a fresh database (after a short untimed warm-up) in a temporary directory
(``--tmp-dir``, default the system's, e.g. /tmp; the output names it and its filesystem, since fsync cost
depends on the disk), removed at the end. Each run measures a section's figures back to back, in reverse
order on every other run; figures are medians over ``--runs`` runs, and a ratio is the median of the
per-run ratios. No targets: exits 0 unless a measurement fails.

    python bench/storage.py [--runs 3] [--quick] [--json] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from report_format import filesystem_of, rounded

from kvstore.config import FsyncPolicy
from kvstore.storage.base import Record
from kvstore.storage.sqlite import FOLD_ROWS, SqliteStorage, _record_crc
from replication.replica import LogEntry

KEY_BYTES = 16
VALUE_BYTES = 100
KEY_SPACE = 10_000  # distinct keys the write measurements cycle over
PARTITIONS = 64
VALUE_POOL = 1024  # distinct values, cycled
RAW_FSYNC_BLOCK = 4096
WARMUP_GROUPS = 20
GROUPS = (1, 100)
LOG_GROUPS = (1, 16, 128)
LOG_PARTITIONS = 8
# Raw SQLite: the same shape of row without the storage's log columns and checksum.
RAW_SCHEMA = "CREATE TABLE kv (id INTEGER PRIMARY KEY, partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB)"
RAW_INSERT = "INSERT INTO kv (partition, key, value) VALUES (?, ?, ?)"
# What recovery reads row by row, and the plain read reference fetches.
RECOVERY_TABLES = ("records", "journal", "log_entries")


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does; write counts are per (group size) measurement."""

    raw_fsyncs: int
    durable_writes: dict[int, int]  # group size -> writes, fsync="always"
    cpu_writes: dict[int, int]  # group size -> writes, fsync="never"
    checksum_rows: int
    recovery_keys: int
    recovery_log_rows: int
    recovery_journal_rows: int  # record changes left unfolded in the journal (fewer than FOLD_ROWS)
    log_appends: dict[int, int]  # group size -> appends, fsync="always"


FULL_SIZES = Sizes(
    raw_fsyncs=5_000,
    durable_writes={1: 3_000, 100: 50_000},
    cpu_writes={1: 50_000, 100: 200_000},
    checksum_rows=100_000,
    recovery_keys=100_000,
    recovery_log_rows=5_000,
    recovery_journal_rows=FOLD_ROWS - 1,
    log_appends={1: 3_000, 16: 16_000, 128: 64_000},
)
QUICK_SIZES = Sizes(
    raw_fsyncs=200,
    durable_writes={1: 100, 100: 2_000},
    cpu_writes={1: 2_000, 100: 10_000},
    checksum_rows=10_000,
    recovery_keys=10_000,
    recovery_log_rows=500,
    recovery_journal_rows=1_000,
    log_appends={1: 100, 16: 1_600, 128: 6_400},
)


class BenchError(RuntimeError):
    """A measurement that could not be made; the message says which."""


# ---------------------------------------------------------------- data


def key_name(index: int) -> str:
    return f"key:{index:0{KEY_BYTES - 4}d}"


def make_values(count: int = VALUE_POOL) -> list[bytes]:
    """Distinct 100-byte values, fixed across runs (no randomness: every run writes the same bytes)."""
    return [(i.to_bytes(4, "big") * (VALUE_BYTES // 4 + 1))[:VALUE_BYTES] for i in range(count)]


def write_rows(count: int, values: Sequence[bytes]) -> list[tuple[int, str, bytes]]:
    """``(partition, key, value)`` for writes 0..count-1: the rows both sides of a comparison write."""
    return [(i % PARTITIONS, key_name(i % KEY_SPACE), values[i % len(values)]) for i in range(count)]


def _fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class WriteSample:
    writes: int
    writes_per_s: float
    syncs_per_s: float
    # Seconds changing the in-memory state (a node's loop thread: write + set_applied_index, or append) and in
    # the sync path (prepare, job, complete).
    put_s: float
    sync_s: float


def measure_raw_fsync(directory: Path, syncs: int) -> float:
    """Syncs/s of a loop of 4 KiB appends, each followed by fdatasync, to a plain file in ``directory``."""
    path = directory / "raw-fsync.bin"
    block = b"\xa5" * RAW_FSYNC_BLOCK
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        for _ in range(WARMUP_GROUPS):
            os.write(fd, block)
            os.fdatasync(fd)
        started = time.perf_counter()
        for _ in range(syncs):
            os.write(fd, block)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return syncs / elapsed


def measure_storage_writes(
    directory: Path, fsync: FsyncPolicy, group: int, writes: int, values: Sequence[bytes]
) -> WriteSample:
    """A fresh SqliteStorage; ``writes`` single-mode writes (the record at the partition's next applied index,
    then that index), a ``sync()`` after every ``group`` of them."""
    if writes % group:
        raise ValueError(f"writes ({writes}) must be a multiple of the group size ({group})")
    data_dir = _fresh_dir(directory, f"storage-{fsync}-{group}")
    rows = write_rows(writes, values)
    warmup = write_rows(WARMUP_GROUPS * group, values)
    storage = SqliteStorage(data_dir / "kv.sqlite3", fsync)
    applied = [0] * PARTITIONS
    try:
        for partition, key, value in warmup:
            applied[partition] += 1
            storage.write(partition, key, Record(value, applied[partition]))
            storage.set_applied_index(partition, applied[partition])
        storage.sync()
        write = storage.write
        set_applied_index = storage.set_applied_index
        sync = storage.sync
        clock = time.perf_counter
        put_s = sync_s = 0.0
        gc.collect()
        for start in range(0, writes, group):
            t0 = clock()
            for partition, key, value in rows[start : start + group]:
                version = applied[partition] = applied[partition] + 1
                write(partition, key, Record(value, version))
                set_applied_index(partition, version)
            t1 = clock()
            sync()
            t2 = clock()
            put_s += t1 - t0
            sync_s += t2 - t1
        if storage.synced_lsn != storage.written_lsn:
            raise BenchError(f"storage {fsync}/{group}: synced LSN {storage.synced_lsn} < {storage.written_lsn}")
    finally:
        storage.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = put_s + sync_s
    return WriteSample(writes, writes / elapsed, writes / group / elapsed, put_s, sync_s)


def measure_raw_sqlite(directory: Path, synchronous: str, group: int, writes: int, values: Sequence[bytes]) -> float:
    """Rows/s of plain sqlite3 (WAL, exclusive locking, ``synchronous``) inserting ``group`` rows per transaction."""
    if writes % group:
        raise ValueError(f"writes ({writes}) must be a multiple of the group size ({group})")
    data_dir = _fresh_dir(directory, f"raw-sqlite-{synchronous}-{group}")
    rows = write_rows(writes, values)
    warmup = write_rows(WARMUP_GROUPS * group, values)
    conn = sqlite3.connect(data_dir / "raw.sqlite3", isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(RAW_SCHEMA)

        def insert(batch: list[tuple[int, str, bytes]]) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_INSERT, batch)
            conn.execute("COMMIT")

        for start in range(0, len(warmup), group):
            insert(warmup[start : start + group])
        gc.collect()
        started = time.perf_counter()
        for start in range(0, writes, group):
            insert(rows[start : start + group])
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return writes / elapsed


def measure_checksum(rows: int, values: Sequence[bytes]) -> float:
    """Seconds per CRC-32 of one record row, the checksum a sync job computes for every record it writes."""
    data = [(i + 1, *row) for i, row in enumerate(write_rows(rows, values))]
    started = time.perf_counter()
    for version, partition, key, value in data:
        _record_crc(partition, key, value, version, None, b"", None)
    return (time.perf_counter() - started) / rows


def log_entry(index: int, values: Sequence[bytes]) -> LogEntry:
    return LogEntry(index, 1, values[index % len(values)])


def build_recovery_file(
    directory: Path, keys: int, log_rows: int, values: Sequence[bytes], journal_rows: int = 0
) -> Path:
    """A SqliteStorage file: ``keys`` records, then ``log_rows`` log entries over the partitions, then
    ``journal_rows`` rewrites of records left in the journal (the process killed, not closed)."""
    if journal_rows >= FOLD_ROWS:
        raise ValueError(f"journal_rows ({journal_rows}) must be under FOLD_ROWS ({FOLD_ROWS}): a sync would fold")
    path = directory / "recovery" / "kv.sqlite3"
    shutil.rmtree(path.parent, ignore_errors=True)
    storage = SqliteStorage(path, "never")
    try:
        for i in range(keys):
            storage.write(i % PARTITIONS, key_name(i), Record(values[i % len(values)], i // PARTITIONS + 1))
        for partition in range(min(keys, PARTITIONS)):
            storage.set_applied_index(partition, (keys - partition - 1) // PARTITIONS + 1)
        storage.sync()
        for n in range(log_rows):
            storage.log(n % PARTITIONS).append([log_entry(n // PARTITIONS + 1, values)])
            if n % 1000 == 999:
                storage.sync()
        storage.sync()
        storage.journal.fold()
        for n in range(journal_rows):
            i = n * 7 % keys
            storage.write(i % PARTITIONS, key_name(i), Record(values[n % len(values)], keys + n + 1))
            if n % 1000 == 999:
                storage.sync()
        storage.sync()
    finally:
        storage.journal.close(fold=False)
    conn = sqlite3.connect(path)
    try:
        counts = tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in RECOVERY_TABLES)
    finally:
        conn.close()
    if counts != (keys, journal_rows, log_rows):
        raise BenchError(
            f"recovery file holds {counts} rows in {RECOVERY_TABLES}, not {(keys, journal_rows, log_rows)}"
        )
    return path


def measure_open(path: Path, expected_keys: int) -> float:
    """Seconds to open (recover) the SqliteStorage at ``path``; closing (without folding the journal, so the
    file stays as it was for the next run) is not timed."""
    gc.collect()
    started = time.perf_counter()
    storage = SqliteStorage(path, "always")
    elapsed = time.perf_counter() - started
    try:
        if storage.key_count() != expected_keys:
            raise BenchError(f"recovered {storage.key_count()} keys, expected {expected_keys}")
    finally:
        storage.journal.close(fold=False)
    return elapsed


def measure_plain_read(path: Path) -> float:
    """Seconds for a plain sqlite3 connection to fetch every row of the records, journal and log_entries tables."""
    gc.collect()
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    try:
        for table in RECOVERY_TABLES:
            for _row in conn.execute(f"SELECT * FROM {table}"):
                pass
    finally:
        conn.close()
    return time.perf_counter() - started


def measure_quick_check(path: Path) -> float:
    """Seconds of ``PRAGMA quick_check`` alone on the file, the structural check the storage runs at open."""
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    try:
        result = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    if result != [("ok",)]:
        raise BenchError(f"quick_check on the recovery file: {result}")
    return elapsed


def measure_log_appends(directory: Path, group: int, appends: int, values: Sequence[bytes]) -> WriteSample:
    """A fresh SqliteStorage (fsync=always); ``appends`` one-entry appends over ``LOG_PARTITIONS`` partitions'
    logs, a ``sync()`` after every ``group`` of them."""
    if appends % group:
        raise ValueError(f"appends ({appends}) must be a multiple of the group size ({group})")
    data_dir = _fresh_dir(directory, f"log-{group}")
    storage = SqliteStorage(data_dir / "kv.sqlite3", "always")
    logs = [storage.log(p) for p in range(LOG_PARTITIONS)]
    entries = [log_entry(n // LOG_PARTITIONS + 1, values) for n in range((WARMUP_GROUPS * group) + appends)]
    try:
        warmup = WARMUP_GROUPS * group
        for n in range(warmup):
            logs[n % LOG_PARTITIONS].append([entries[n]])
        storage.sync()
        sync = storage.sync
        clock = time.perf_counter
        append_s = sync_s = 0.0
        gc.collect()
        for start in range(warmup, warmup + appends, group):
            t0 = clock()
            for n in range(start, start + group):
                logs[n % LOG_PARTITIONS].append([entries[n]])
            t1 = clock()
            sync()
            t2 = clock()
            append_s += t1 - t0
            sync_s += t2 - t1
        if storage.synced_lsn != storage.written_lsn:
            raise BenchError(f"log {group}: synced LSN {storage.synced_lsn} < {storage.written_lsn}")
        if any(log.synced_through() != log.bounds().last_index for log in logs):
            raise BenchError(f"log {group}: a log is not synced through its last entry")
    finally:
        storage.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = append_s + sync_s
    return WriteSample(appends, appends / elapsed, appends / group / elapsed, append_s, sync_s)


# ---------------------------------------------------------------- one run


# Named measurements of one section, in the order a run takes them.
Steps = list[tuple[str, Callable[[], Any]]]


def _in_order(steps: Steps, reverse: bool) -> dict[str, Any]:
    return {name: fn() for name, fn in (reversed(steps) if reverse else steps)}


def run_once(work_dir: Path, sizes: Sizes, run: int, values: Sequence[bytes], recovery_file: Path) -> dict[str, Any]:
    """Every figure once; each section's measurements back to back, in reverse order when ``run`` is odd."""
    reverse = run % 2 == 1
    durable: Steps = [("raw_fsync", partial(measure_raw_fsync, work_dir, sizes.raw_fsyncs))]
    cpu: Steps = []
    log_store: Steps = [
        (f"log_{group}", partial(measure_log_appends, work_dir, group, sizes.log_appends[group], values))
        for group in LOG_GROUPS
    ]
    for group in GROUPS:
        n, m = sizes.durable_writes[group], sizes.cpu_writes[group]
        durable += [
            (f"storage_{group}", partial(measure_storage_writes, work_dir, "always", group, n, values)),
            (f"raw_sqlite_{group}", partial(measure_raw_sqlite, work_dir, "FULL", group, n, values)),
        ]
        cpu += [
            (f"storage_{group}", partial(measure_storage_writes, work_dir, "never", group, m, values)),
            (f"raw_sqlite_{group}", partial(measure_raw_sqlite, work_dir, "OFF", group, m, values)),
        ]
    cpu.append(("checksum_s", partial(measure_checksum, sizes.checksum_rows, values)))
    recovery: Steps = [
        ("open_s", partial(measure_open, recovery_file, sizes.recovery_keys)),
        ("plain_read_s", partial(measure_plain_read, recovery_file)),
        ("quick_check_s", partial(measure_quick_check, recovery_file)),
    ]
    return {
        "durable": _in_order(durable, reverse),
        "cpu": _in_order(cpu, reverse),
        "recovery": _in_order(recovery, reverse),
        "log": _in_order(log_store, reverse),
    }


# ---------------------------------------------------------------- summary


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(per_run: list[float]) -> dict[str, Any]:
    return {"ratio": _median(per_run), "runs_ratio": per_run}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over ``runs`` (each from ``run_once``) of every figure, and medians of per-run ratios."""
    durable_runs = [r["durable"] for r in runs]
    cpu_runs = [r["cpu"] for r in runs]
    rec_runs = [r["recovery"] for r in runs]
    raw_fsync = [d["raw_fsync"] for d in durable_runs]
    durable: dict[str, Any] = {"raw_fsyncs_per_s": _median(raw_fsync), "runs_raw_fsyncs_per_s": raw_fsync}
    cpu: dict[str, Any] = {"checksum_us_per_row": _median([c["checksum_s"] for c in cpu_runs]) * 1e6}
    for group in GROUPS:
        for section, section_runs in (("durable", durable_runs), ("cpu", cpu_runs)):
            samples: list[WriteSample] = [s[f"storage_{group}"] for s in section_runs]
            raw_rows = [s[f"raw_sqlite_{group}"] for s in section_runs]
            writes = [s.writes_per_s for s in samples]
            row: dict[str, Any] = {
                "group": group,
                "storage_writes_per_s": _median(writes),
                "storage_syncs_per_s": _median([s.syncs_per_s for s in samples]),
                "put_share": _median([s.put_s / (s.put_s + s.sync_s) for s in samples]),
                "sync_us_per_write": _median([s.sync_s / s.writes for s in samples]) * 1e6,
                "raw_sqlite_rows_per_s": _median(raw_rows),
                "runs_storage_writes_per_s": writes,
                "runs_raw_sqlite_rows_per_s": raw_rows,
                "storage_over_raw_sqlite": _ratio([w / r for w, r in zip(writes, raw_rows, strict=True)]),
            }
            if section == "durable":
                syncs = [s.syncs_per_s for s in samples]
                row["syncs_over_raw_fsync"] = _ratio([s / f for s, f in zip(syncs, raw_fsync, strict=True)])
                durable[f"group_{group}"] = row
            else:
                cpu[f"group_{group}"] = row
    opens = [r["open_s"] for r in rec_runs]
    reads = [r["plain_read_s"] for r in rec_runs]
    recovery = {
        "open_s": _median(opens),
        "plain_read_s": _median(reads),
        "quick_check_s": _median([r["quick_check_s"] for r in rec_runs]),
        "runs_open_s": opens,
        "runs_plain_read_s": reads,
        "open_over_plain_read": _ratio([o / p for o, p in zip(opens, reads, strict=True)]),
    }
    log_store: dict[str, Any] = {}
    for group in LOG_GROUPS:
        samples = [r["log"][f"log_{group}"] for r in runs]
        appends = [s.writes_per_s for s in samples]
        syncs = [s.syncs_per_s for s in samples]
        log_store[f"group_{group}"] = {
            "group": group,
            "appends_per_s": _median(appends),
            "syncs_per_s": _median(syncs),
            "sync_us_per_append": _median([s.sync_s / s.writes for s in samples]) * 1e6,
            "runs_appends_per_s": appends,
            "syncs_over_raw_fsync": _ratio([s / f for s, f in zip(syncs, raw_fsync, strict=True)]),
        }
    return {"durable": durable, "cpu": cpu, "recovery": recovery, "log": log_store}


def _per_run(values: Sequence[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["sizes"]
    d, c, r, lg = report["durable"], report["cpu"], report["recovery"], report["log"]
    lines = [
        f"bench/storage.py: median of {report['runs']} run(s){' (quick)' if report['quick'] else ''}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, SQLite {m['sqlite']}; data in {report['data_dir']} "
        f"({report['data_filesystem']})",
        f"{KEY_BYTES}-byte keys over {KEY_SPACE} keys in {PARTITIONS} partitions, {VALUE_BYTES}-byte values",
        "",
        f"1. Durable writes, fsync=always (raw fsync ceiling: {d['raw_fsyncs_per_s']:,.0f} syncs/s of 4 KiB "
        f"write+fdatasync; per run {_per_run(d['runs_raw_fsyncs_per_s'], ',.0f')})",
        f"{'writes/sync':>11} {'writes':>7} {'writes/s':>9} {'syncs/s':>8} {'raw SQLite rows/s':>18}"
        f" {'syncs/raw fsync':>16} {'writes/raw SQLite':>18}",
    ]
    for group in GROUPS:
        g = d[f"group_{group}"]
        lines.append(
            f"{group:>11} {s['durable_writes'][str(group)]:>7} {g['storage_writes_per_s']:>9,.0f} "
            f"{g['storage_syncs_per_s']:>8,.0f} {g['raw_sqlite_rows_per_s']:>18,.0f} "
            f"{g['syncs_over_raw_fsync']['ratio']:>15.2f}x {g['storage_over_raw_sqlite']['ratio']:>17.2f}x"
            f"   per run: {_per_run(g['syncs_over_raw_fsync']['runs_ratio'], '.2f')} / "
            f"{_per_run(g['storage_over_raw_sqlite']['runs_ratio'], '.2f')}"
        )
    lines += [
        "",
        f"2. CPU cost, fsync=never (synchronous=OFF); CRC-32 of one record row: {c['checksum_us_per_row']:.2f} µs",
        f"{'writes/sync':>11} {'writes':>7} {'writes/s':>9} {'raw SQLite rows/s':>18} {'writes/raw SQLite':>18}"
        f" {'put share':>10} {'sync µs/write':>14}",
    ]
    for group in GROUPS:
        g = c[f"group_{group}"]
        lines.append(
            f"{group:>11} {s['cpu_writes'][str(group)]:>7} {g['storage_writes_per_s']:>9,.0f} "
            f"{g['raw_sqlite_rows_per_s']:>18,.0f} {g['storage_over_raw_sqlite']['ratio']:>17.2f}x "
            f"{g['put_share']:>10.0%} {g['sync_us_per_write']:>14.1f}"
            f"   per run: {_per_run(g['storage_over_raw_sqlite']['runs_ratio'], '.2f')}"
        )
    lines += [
        "",
        f"3. Recovery of {s['recovery_keys']:,} records + {s['recovery_journal_rows']:,} journal rows + "
        f"{s['recovery_log_rows']:,} log entries (file {report['recovery_file_bytes'] / 1e6:.1f} MB, "
        "in the page cache)",
        f"  open (recover) {r['open_s']:.3f} s, plain SELECT of the three tables {r['plain_read_s']:.3f} s: "
        f"{r['open_over_plain_read']['ratio']:.2f}x (per run "
        f"{_per_run(r['open_over_plain_read']['runs_ratio'], '.2f')}); quick_check alone {r['quick_check_s']:.3f} s",
        "",
        f"4. Log store, fsync=always: {VALUE_BYTES}-byte entries appended over {LOG_PARTITIONS} partitions, one sync "
        f"per group (raw fsync ceiling: {d['raw_fsyncs_per_s']:,.0f} syncs/s)",
        f"{'appends/sync':>12} {'appends':>8} {'appends/s':>10} {'syncs/s':>8} {'syncs/raw fsync':>16}"
        f" {'sync µs/append':>15}",
    ]
    for group in LOG_GROUPS:
        g = lg[f"group_{group}"]
        lines.append(
            f"{group:>12} {s['log_appends'][str(group)]:>8} {g['appends_per_s']:>10,.0f} {g['syncs_per_s']:>8,.0f} "
            f"{g['syncs_over_raw_fsync']['ratio']:>15.2f}x {g['sync_us_per_append']:>15.1f}"
            f"   per run: {_per_run(g['syncs_over_raw_fsync']['runs_ratio'], '.2f')}"
        )
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    values = make_values()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-storage-", dir=args.tmp_dir) as tmp:
        work_dir = Path(tmp)
        recovery_file = build_recovery_file(
            work_dir, sizes.recovery_keys, sizes.recovery_log_rows, values, sizes.recovery_journal_rows
        )
        file_bytes = recovery_file.stat().st_size
        runs = []
        for run in range(args.runs):
            runs.append(run_once(work_dir, sizes, run, values, recovery_file))
            if not args.json:
                print(f"  run {run + 1}/{args.runs} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        data_filesystem = filesystem_of(work_dir)
    report: dict[str, Any] = rounded(
        {
            "bench": "storage",
            "runs": args.runs,
            "quick": args.quick,
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "platform": platform.platform(),
            },
            "data_dir": str(work_dir.parent),
            "data_filesystem": data_filesystem,
            "sizes": json.loads(json.dumps(asdict(sizes))),  # int dict keys become strings, as in the JSON line
            "recovery_file_bytes": file_bytes,
            **summarize(runs),
            "total_s": time.perf_counter() - started,
        }
    )
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 1 run")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--tmp-dir", help="where the temporary directory goes (fsync cost depends on its disk)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        report = run_bench(args)
    except (BenchError, OSError, sqlite3.Error) as exc:
        print(f"storage bench failed: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(render(report))
        print()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
