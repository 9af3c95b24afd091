"""KvStateMachine: one partition's records, as every replication protocol orders and applies them.

It implements ``replication.replica.StateMachine``. A protocol answers a read (``GetOp``) from its copy
with ``read``; it turns a write op into a command once, where the op is ordered (``command``: the
orderer's clock becomes the command's ``at_ms`` and a ``ttl_ms`` an absolute ``expires_at_ms``), and
applies commands in order (``apply``). Apply is deterministic: it judges expiry at the command's
``at_ms``, never at the applying node's clock, and what a command writes takes the command's index as its
version, so two replicas applying the same commands end with the same records. The applied index is
recorded with what the command writes (one sync makes both durable); a command that writes nothing (a
refused CAS, a delete of an absent key) records nothing.

Expired records are purged through the protocol too: ``purge_command`` names keys expired now and
applying it removes each one still expired at the command's ``at_ms`` (it may have been rewritten
between the two).
"""

from __future__ import annotations

from kvstore import codec
from kvstore.codec import INT64_MAX, CodecError
from kvstore.commands import (
    COMMAND_TYPES,
    CasCommand,
    Command,
    DeleteCommand,
    MergeCommand,
    PurgeCommand,
    PutCommand,
    RefusedCommand,
)
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CasOp,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    PutOp,
    Result,
    ScanItem,
    ScanPage,
    Written,
)
from kvstore.storage.base import Record, Storage
from replication.event_time import merge_encoded

# Builds a Record from all its fields, as NamedTuple._make does, without the generated __new__ that fills
# in the defaults: ~100 ns of the ~200 ns a record costs, and every write makes one. A record written here
# has no causal context and no siblings.
_tuple_new = tuple.__new__


class KvStateMachine:
    def __init__(self, storage: Storage, partition: int) -> None:
        self._storage = storage
        self._partition = partition

    # ------------------------------------------------------------ reads

    def is_read(self, op: object) -> bool:
        return type(op) is GetOp

    def read(self, op: object, now_ms: int) -> Result:
        if not isinstance(op, GetOp):
            raise TypeError(f"not a read: {op!r}")
        record = self._storage.get(self._partition, op.key, now_ms)
        if record is None or record.value is None:
            return Failure.of(ErrorCode.NOT_FOUND, f"key {op.key!r} not found")
        return Found(op.key, record.value, record.version, record.expires_at_ms)

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> ScanPage:
        rows = self._storage.scan(self._partition, start, end, limit + 1, now_ms)
        # Storage returns live records only, which always hold a value.
        items = tuple(ScanItem(key, r.value, r.version) for key, r in rows[:limit] if r.value is not None)
        return ScanPage(items, truncated=len(rows) > limit)

    # ------------------------------------------------------------ ordering

    def command(self, op: object, now_ms: int) -> Command:
        """The command for write ``op`` ordered at ``now_ms``: a ``RefusedCommand`` if its deadline would not
        fit in the signed 64 bits that storage and the wire hold deadlines in (only an absurd clock)."""
        # Every deadline fits in 64 bits, so judging expiry at a later time than INT64_MAX judges the same;
        # clamping keeps the command encodable.
        at_ms = now_ms if now_ms <= INT64_MAX else INT64_MAX
        if type(op) is PutOp and op.ttl_ms is None:  # the common write, without the checks a deadline needs
            if op.merge:
                return MergeCommand(at_ms, op.key, op.value)
            return PutCommand(at_ms, op.key, op.value, None)
        if isinstance(op, (PutOp, CasOp)):
            expires_at_ms = None
            if op.ttl_ms is not None:
                expires_at_ms = now_ms + op.ttl_ms
                if expires_at_ms > INT64_MAX:
                    message = f"this node's clock is too far ahead to hold a deadline {op.ttl_ms} ms from now"
                    return RefusedCommand(message + "; the op did not happen")
            if isinstance(op, PutOp):
                return PutCommand(at_ms, op.key, op.value, expires_at_ms)
            return CasCommand(at_ms, op.key, op.expected, op.new, expires_at_ms)
        if isinstance(op, DeleteOp):
            return DeleteCommand(at_ms, op.key)
        raise TypeError(f"not a write op: {op!r}")

    def early_result(self, command: object, index: int) -> object | None:
        # A put's result is its version, the index: known before apply. A delete's (did the key exist?) and a
        # compare-and-set's depend on the records, so they are answered on apply.
        if type(command) is PutCommand:
            return Written(command.key, index)
        return None

    def purge_command(self, now_ms: int, max_keys: int) -> PurgeCommand | None:
        at_ms = now_ms if now_ms <= INT64_MAX else INT64_MAX
        keys = self._storage.expired_keys(self._partition, at_ms, max_keys)
        return PurgeCommand(at_ms, tuple(keys)) if keys else None

    # ------------------------------------------------------------ applying

    def apply(self, index: int, command: object) -> object:
        """The op's result (``Written``, ``Deleted``, ``Failure``), or for a purge the number of keys removed."""
        storage, partition = self._storage, self._partition
        if isinstance(command, PutCommand):
            record = _tuple_new(Record, (command.value, index, command.expires_at_ms, b"", ()))
            storage.write(partition, command.key, record)
            storage.set_applied_index(partition, index)
            return Written(command.key, index)
        if isinstance(command, MergeCommand):
            return self._apply_merge(index, command)
        if isinstance(command, DeleteCommand):
            stored = storage.get_stored(partition, command.key)
            if stored is None:
                return Deleted(command.key, False)
            # An expired record not yet purged is already gone as far as clients can tell.
            existed = stored.live(command.at_ms)
            storage.remove(partition, command.key)
            storage.set_applied_index(partition, index)
            return Deleted(command.key, existed)
        if isinstance(command, CasCommand):
            return self._apply_cas(index, command)
        if isinstance(command, PurgeCommand):
            return self._apply_purge(index, command)
        if isinstance(command, RefusedCommand):
            return Failure.of(ErrorCode.UNAVAILABLE, command.message)
        raise TypeError(f"not a command: {command!r}")

    def _apply_cas(self, index: int, command: CasCommand) -> Result:
        storage, partition, key = self._storage, self._partition, command.key
        current = storage.get(partition, key, command.at_ms)
        current_value = None if current is None else current.value
        if current_value != command.expected:
            wanted = "absent" if command.expected is None else "the expected value"
            return Failure.of(ErrorCode.PRECONDITION_FAILED, f"key {key!r} is not {wanted}")
        if command.new is None:
            if storage.remove(partition, key):
                storage.set_applied_index(partition, index)
            return Deleted(key, current is not None)
        storage.write(partition, key, _tuple_new(Record, (command.new, index, command.expires_at_ms, b"", ())))
        storage.set_applied_index(partition, index)
        return Written(key, index)

    def _apply_merge(self, index: int, command: MergeCommand) -> Result:
        """The stored row with the command's merged in. A merge that changes nothing (an event already held, or
        older than every cell it names) writes nothing, so it takes no position in the change feed."""
        storage, partition, key = self._storage, self._partition, command.key
        stored = storage.get_stored(partition, key)
        held = None if stored is None else stored.value
        try:
            merged = merge_encoded(held, command.value)
        except ValueError as exc:
            # The node checks rows before ordering them; only a faulty peer's entry gets here, alike everywhere.
            return Failure.of(ErrorCode.BAD_REQUEST, f"not merged: {exc}")
        if stored is not None and merged == held:
            return Written(key, stored.version)
        storage.write(partition, key, _tuple_new(Record, (merged, index, None, b"", ())))
        storage.set_applied_index(partition, index)
        return Written(key, index)

    def _apply_purge(self, index: int, command: PurgeCommand) -> int:
        storage, partition = self._storage, self._partition
        purged = 0
        for key in command.keys:
            stored = storage.get_stored(partition, key)
            # Rewritten (or already removed) since the command was made: not ours to purge.
            if stored is not None and stored.expired(command.at_ms):
                storage.remove(partition, key)
                purged += 1
        if purged:
            storage.set_applied_index(partition, index)
        return purged

    # ------------------------------------------------------------ log entries

    def encode_command(self, command: object) -> bytes:
        return codec.encode(command)

    def decode_command(self, data: bytes) -> Command:
        command = codec.decode(data)
        if not isinstance(command, COMMAND_TYPES):
            raise CodecError(f"a log entry holds a {type(command).__name__}, not a command")
        return command
