"""The reference model of a storage engine that the crash machines compare against (SimStorage, SqliteStorage).

Plain Python, with no MemoryStorage: records, meta, and per partition a log (snapshot point and the entries
after it), a hard state and an applied index. It names changes with base.py's events but applies them
itself. ``Model.view`` and ``view_of`` put the model and a storage in one shape, lists in the order the
storage promises (records by partition then key, meta by name), so that ``==`` compares them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.storage.base import (
    AppliedIndexWritten,
    Event,
    HardStateWritten,
    LogAppended,
    LogCompacted,
    LogTruncated,
    MetaWritten,
    Record,
    RecordRemoved,
    RecordWritten,
)
from kvstore.storage.memory import MemoryStorage
from replication.replica import LogBounds, LogEntry

View = tuple[Any, ...]


@dataclass
class ModelLog:
    snapshot_index: int = 0
    snapshot_term: int = 0
    entries: list[LogEntry] = field(default_factory=list)
    hard_state: bytes | None = None
    applied_index: int = 0

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index: int) -> int:
        """The term of the entry at ``index`` (after the snapshot point)."""
        return self.entries[index - self.snapshot_index - 1].term


@dataclass
class Model:
    partitions: Sequence[int]
    records: dict[tuple[int, str], Record] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)
    logs: dict[int, ModelLog] = field(init=False)

    def __post_init__(self) -> None:
        self.logs = {p: ModelLog() for p in self.partitions}

    def apply(self, change: Event) -> None:
        """The model's own reading of a change (the ``lsn`` field is unused: the model orders by call)."""
        if isinstance(change, RecordWritten):
            self.records[(change.partition, change.key)] = change.record
        elif isinstance(change, RecordRemoved):
            del self.records[(change.partition, change.key)]
        elif isinstance(change, MetaWritten):
            self.meta[change.name] = change.value
        elif isinstance(change, LogAppended):
            self.logs[change.partition].entries.extend(change.entries)
        elif isinstance(change, LogTruncated):
            log = self.logs[change.partition]
            del log.entries[change.from_index - log.snapshot_index - 1 :]
        elif isinstance(change, LogCompacted):
            log = self.logs[change.partition]
            del log.entries[: change.through_index - log.snapshot_index]
            log.snapshot_index, log.snapshot_term = change.through_index, change.term
        elif isinstance(change, HardStateWritten):
            self.logs[change.partition].hard_state = change.value
        else:
            assert isinstance(change, AppliedIndexWritten), change
            self.logs[change.partition].applied_index = change.index

    def view(self) -> View:
        logs = [
            (
                p,
                LogBounds(log.snapshot_index, log.snapshot_term, log.last_index),
                log.entries,
                log.hard_state,
                log.applied_index,
            )
            for p, log in sorted(self.logs.items())
        ]
        return sorted((p, k, r) for (p, k), r in self.records.items()), sorted(self.meta.items()), logs


def view_of(s: MemoryStorage, partitions: Sequence[int]) -> View:
    """The storage's state in the model's shape, in the order the storage gives it."""
    logs = []
    for p in sorted(partitions):
        log = s.log(p)
        bounds = log.bounds()
        entries = log.entries(bounds.first_index, bounds.last_index + 1, 1 << 30)
        logs.append((p, bounds, entries, log.hard_state(), log.applied_index()))
    return s.items(), s.meta_items(), logs
