"""SimDisk's two images (OS-written, durable), its crash kinds, and SimStorage over it."""

from __future__ import annotations

import random

import pytest

from kvstore.storage.base import Record, Storage
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage, SimSyncJob
from replication.replica import LogBounds, LogEntry


def state(s: MemoryStorage, partitions: range = range(3)) -> object:
    """Everything a restart recovers: records, meta, and each partition's log state."""
    logs = []
    for p in partitions:
        log = s.log(p)
        bounds = log.bounds()
        logs.append(
            (
                bounds,
                log.entries(bounds.first_index, bounds.last_index + 1, 10**9),
                log.hard_state(),
                log.applied_index(),
            )
        )
    return s.items(), s.meta_items(), logs


def run(s: SimStorage, *, fsync: bool) -> SimSyncJob:
    job = s.prepare_sync(fsync=fsync)
    assert job is not None
    job.run()
    s.complete_sync(job)
    return job


def test_conforms_to_protocol() -> None:
    storage: Storage = SimStorage(SimDisk())
    assert storage.written_lsn == storage.synced_lsn == 0


def test_written_vs_synced() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    s.put_meta("epoch", b"1")
    assert (s.written_lsn, s.synced_lsn) == (2, 0)
    assert s.get(0, "a", 0) == Record(b"1", 1)  # reads see written data at once
    job = s.prepare_sync()
    assert job is not None and (job.up_to_lsn, job.fsync) == (2, True)
    assert s.prepare_sync() is None  # the job owns those events now
    s.write(0, "b", Record(b"2", 2))  # written while the job is pending: belongs to the next job
    assert disk.image.items() == [] and disk.syncs == 0
    job.run()
    assert disk.image.items() == disk.durable_image.items() == [(0, "a", Record(b"1", 1))]
    assert disk.syncs == 1 and s.synced_lsn == 0
    s.complete_sync(job)
    assert (s.written_lsn, s.synced_lsn) == (3, 2)


def test_a_write_without_fsync_reaches_the_os_image_only() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    job = run(s, fsync=False)
    assert job.fsync is False and s.synced_lsn == 1
    assert disk.image.items() == [(0, "a", Record(b"1", 1))]
    assert disk.durable_image.items() == []
    s.write(0, "b", Record(b"2", 2))
    run(s, fsync=True)  # an fsync makes everything written so far durable, the earlier write-out too
    assert disk.durable_image.items() == disk.image.items() == [(0, "a", Record(b"1", 1)), (0, "b", Record(b"2", 2))]
    assert disk.syncs == 2


def test_writeback_makes_the_os_image_durable() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    s.log(1).append([LogEntry(1, 1, b"x")])
    run(s, fsync=False)
    disk.writeback()
    disk.writeback()  # nothing left to flush
    assert state(disk.durable_image) == state(disk.image)
    assert disk.durable_image.log(1).bounds() == LogBounds(0, 0, 1)
    disk.crash("power")
    assert SimStorage(disk).get(0, "a", 0) == Record(b"1", 1)


def test_process_crash_keeps_the_os_image_power_loss_only_the_durable_one() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "kept", Record(b"1", 1))
    s.log(0).append([LogEntry(1, 1, b"a")])
    s.log(0).set_hard_state(b"term=1")
    s.put_meta("epoch", b"1")
    run(s, fsync=True)
    durable_state = state(disk.image)
    s.write(0, "written", Record(b"2", 2))
    s.remove(0, "kept")
    s.log(0).append([LogEntry(2, 2, b"b")])
    s.log(0).set_hard_state(b"term=2")
    s.set_applied_index(0, 2)
    s.put_meta("epoch", b"2")
    run(s, fsync=False)
    os_state = state(s)
    s.write(0, "never-written", Record(b"3", 3))  # not even handed to a job: lost by either crash

    disk.crash("process")
    after_process = SimStorage(disk)
    assert state(after_process) == os_state
    assert after_process.get(0, "never-written", 0) is None
    assert after_process.written_lsn == after_process.synced_lsn == 0  # LSNs count from 0 at every open

    disk.crash("power")
    after_power = SimStorage(disk)
    assert state(after_power) == durable_state
    assert after_power.log(0).hard_state() == b"term=1"
    assert after_power.log(0).bounds() == LogBounds(0, 0, 1)
    assert after_power.get(0, "kept", 0) == Record(b"1", 1)


def test_a_process_crash_keeps_written_pages_for_a_later_writeback() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    run(s, fsync=False)
    disk.crash("process")
    disk.writeback()  # the kernel still held the pages, and flushed them
    disk.crash("power")
    assert SimStorage(disk).items() == [(0, "a", Record(b"1", 1))]


def test_crash_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="crash kind"):
        SimDisk().crash("disk")  # type: ignore[arg-type]


def test_restart_does_not_share_state_with_the_disk() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    s.log(0).append([LogEntry(1, 1, b"x")])
    run(s, fsync=True)
    again = SimStorage(disk)
    again.write(0, "a", Record(b"changed", 2))
    again.remove(0, "a")
    again.log(0).truncate_suffix(1)
    assert disk.image.get(0, "a", 0) == Record(b"1", 1)
    assert disk.image.log(0).bounds() == LogBounds(0, 0, 1)


def test_close_syncs_pending_events() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(0, "a", Record(b"1", 1))
    s.close()
    disk.crash("power")
    assert SimStorage(disk).get(0, "a", 0) == Record(b"1", 1)


def _run(seed: int) -> object:
    rng = random.Random(seed)
    disk = SimDisk()
    s = SimStorage(disk)
    for step in range(2000):
        roll = rng.random()
        key = f"k{rng.randrange(50)}"
        partition = rng.randrange(3)
        if roll < 0.45:
            deadline = rng.choice([None, step + rng.randrange(100)])
            s.write(partition, key, Record(rng.choice([None, rng.randbytes(4)]), step, deadline))
        elif roll < 0.6:
            s.remove(partition, key)
        elif roll < 0.65:
            s.put_meta(f"m{rng.randrange(3)}", rng.randbytes(2))
        elif roll < 0.7:
            log = s.log(partition)
            log.append([LogEntry(log.bounds().last_index + 1, 1, rng.randbytes(3))])
        elif roll < 0.8:
            s.sync()
        elif roll < 0.85:
            job = s.prepare_sync(fsync=False)
            if job is not None:
                job.run()
                s.complete_sync(job)
        elif roll < 0.9:
            disk.writeback()
        else:
            disk.crash(rng.choice(["process", "power"]))
            s = SimStorage(disk)
    return state(disk.image), state(disk.durable_image)


def test_same_sequence_gives_the_same_state() -> None:
    first = _run(7)
    assert first == _run(7)
    assert first != _run(8)
