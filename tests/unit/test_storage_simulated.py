from __future__ import annotations

import random

from kvstore.storage.base import Record, Storage
from kvstore.storage.simulated import SimDisk, SimStorage


def test_conforms_to_protocol() -> None:
    storage: Storage = SimStorage(SimDisk())
    assert storage.written_lsn == storage.synced_lsn == 0


def test_written_vs_synced() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.put(0, "a", b"1")
    s.put_meta("term", b"1")
    assert (s.written_lsn, s.synced_lsn, disk.synced_lsn) == (2, 0, 0)
    assert s.get(0, "a", 0) == Record(b"1", 1)  # reads see written data at once
    job = s.prepare_sync()
    assert job is not None and job.up_to_lsn == 2
    assert s.prepare_sync() is None  # the job owns those events now
    s.put(0, "b", b"2")  # written while the job is pending: belongs to the next job
    job.run()
    assert disk.synced_lsn == 2 and s.synced_lsn == 0
    s.complete_sync(job)
    assert (s.written_lsn, s.synced_lsn) == (3, 2)


def test_crash_keeps_synced_and_loses_unsynced() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.put(0, "kept", b"1")
    s.put(1, "gone-later", b"1", expires_at_ms=500)
    s.put_meta("vote", b"n1")
    s.sync()
    s.put(0, "lost", b"2")
    s.delete(1, "gone-later")
    s.put_meta("vote", b"n2")
    del s  # the crash

    restarted = SimStorage(disk)
    assert restarted.items() == [(0, "kept", Record(b"1", 1)), (1, "gone-later", Record(b"1", 2, 500))]
    assert restarted.get_meta("vote") == b"n1"
    assert restarted.written_lsn == restarted.synced_lsn == 3
    # The LSNs of the lost writes are handed out again, as a real engine restarting from its log would.
    assert restarted.put(0, "new", b"3").version == 4
    assert restarted.purge_expired(500, 10) == 1


def test_restart_does_not_share_state_with_the_disk() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.put(0, "a", b"1")
    s.sync()
    again = SimStorage(disk)
    again.put(0, "a", b"changed")
    again.delete(0, "a")
    assert disk.image.get(0, "a", 0) == Record(b"1", 1)


def test_close_syncs_pending_events() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.put(0, "a", b"1")
    s.close()
    assert SimStorage(disk).get(0, "a", 0) == Record(b"1", 1)


def _run(seed: int) -> tuple[list[tuple[int, str, Record]], list[tuple[str, bytes]], int]:
    rng = random.Random(seed)
    disk = SimDisk()
    s = SimStorage(disk)
    for step in range(2000):
        roll = rng.random()
        key = f"k{rng.randrange(50)}"
        partition = rng.randrange(4)
        if roll < 0.5:
            ttl = rng.choice([None, step + rng.randrange(100)])
            s.put(partition, key, rng.randbytes(4), ttl)
        elif roll < 0.7:
            s.delete(partition, key)
        elif roll < 0.75:
            s.put_meta(f"m{rng.randrange(3)}", rng.randbytes(2))
        elif roll < 0.85:
            s.sync()
        elif roll < 0.9:
            s.purge_expired(step, rng.randrange(5))
        else:
            s = SimStorage(disk)  # crash and restart
    return disk.image.items(), disk.image.meta_items(), disk.synced_lsn


def test_same_sequence_gives_the_same_state() -> None:
    first = _run(7)
    assert first == _run(7)
    assert first != _run(8)
    assert len(first[0]) > 0
