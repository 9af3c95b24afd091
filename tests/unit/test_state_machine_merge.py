"""Merges of event-time rows in single and leader mode (``MergeCommand``, ``KvStateMachine._apply_merge``): the
same commands give the same records on every replica, a merge that changes nothing writes nothing (no version,
no position in the change feed), a malformed row is refused alike everywhere; and ``check_op``'s refusals for
merges and for every other write under the event-time prefixes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.commands import MergeCommand, PutCommand
from kvstore.config import EVENT_TIME_PREFIXES, Limits
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import (
    BatchPutOp,
    CasOp,
    ChangesOp,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    PutOp,
    Written,
)
from kvstore.state_machine import KvStateMachine
from kvstore.storage.base import Record
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage
from kvstore.validation import check_op
from replication.event_time import Row, decode_row, encode_row, merge_rows

P = 1
KEY = "__fs/on/clicks/42"
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOTHING: Row = {}


def apply_next(storage: MemoryStorage, m: KvStateMachine, command: object) -> object:
    return m.apply(storage.log(P).applied_index() + 1, command)


def row(**cells: tuple[int, object]) -> bytes:
    return encode_row(dict(cells))


# ---------------------------------------------------------------- commands


def test_a_merge_put_becomes_a_merge_command_and_survives_the_log_codec() -> None:
    m = KvStateMachine(MemoryStorage(), P)
    data = row(x=(1, 2))
    command = m.command(PutOp(KEY, data, merge=True), 77)
    assert command == MergeCommand(77, KEY, data)
    assert m.decode_command(m.encode_command(command)) == command
    assert m.command(PutOp(KEY, data), 77) == PutCommand(77, KEY, data, None)


def test_merges_join_rows_and_take_the_index_that_changed_them() -> None:
    storage = MemoryStorage()
    m = KvStateMachine(storage, P)
    assert m.apply(5, MergeCommand(0, KEY, row(x=(10, 1), y=(10, "a")))) == Written(KEY, 5)
    assert m.apply(6, MergeCommand(0, KEY, row(x=(20, 2)))) == Written(KEY, 6)
    assert m.apply(7, MergeCommand(0, KEY, row(y=(5, "old"), z=(1, None)))) == Written(KEY, 7)
    stored = storage.get_stored(P, KEY)
    assert stored is not None and stored.version == 7 and stored.expires_at_ms is None
    assert decode_row(stored.value or b"") == {"x": (20, 2), "y": (10, "a"), "z": (1, None)}
    assert m.read(GetOp(KEY), 0) == Found(KEY, stored.value or b"", 7, None)
    assert storage.log(P).applied_index() == 7


def test_a_merge_that_changes_nothing_writes_nothing_and_takes_no_version() -> None:
    storage = MemoryStorage()
    m = KvStateMachine(storage, P)
    m.apply(3, MergeCommand(0, KEY, row(x=(10, 1), y=(10, 2))))
    lsn = storage.written_lsn
    assert m.apply(4, MergeCommand(0, KEY, row(x=(10, 1)))) == Written(KEY, 3)  # a duplicate event
    assert m.apply(5, MergeCommand(0, KEY, row(x=(9, 7), y=(2, 0)))) == Written(KEY, 3)  # older than each cell
    assert m.apply(6, MergeCommand(0, KEY, row(x=(10, 0)))) == Written(KEY, 3)  # a tie, smaller bytes
    assert storage.written_lsn == lsn and storage.log(P).applied_index() == 3
    assert storage.changes_after(P, 3, 10) == ([], 3, False)
    # A tie with larger bytes does change the row.
    assert m.apply(7, MergeCommand(0, KEY, row(x=(10, 5)))) == Written(KEY, 7)


def test_an_empty_row_merged_into_nothing_is_stored() -> None:
    storage = MemoryStorage()
    m = KvStateMachine(storage, P)
    assert m.apply(1, MergeCommand(0, KEY, encode_row({}))) == Written(KEY, 1)
    assert storage.get_stored(P, KEY) == Record(encode_row({}), 1)


@pytest.mark.parametrize("bad", [b"", b"\xc1", b"\x91\x01", encode_row({"b": (1, 1)})[:-1]])
def test_a_malformed_row_is_refused_alike_on_every_replica_and_writes_nothing(bad: bytes) -> None:
    replicas = [MemoryStorage(), SimStorage(SimDisk())]
    results = []
    for storage in replicas:
        m = KvStateMachine(storage, P)
        m.apply(1, MergeCommand(0, KEY, row(x=(1, 1))))
        results.append(m.apply(2, MergeCommand(0, KEY, bad)))
        assert storage.log(P).applied_index() == 1
        assert storage.get_stored(P, KEY) == Record(row(x=(1, 1)), 1)
    assert results[0] == results[1]
    assert isinstance(results[0], Failure) and results[0].code == ErrorCode.BAD_REQUEST.value
    assert results[0].message.startswith("not merged: ")


def test_a_merge_into_a_value_that_is_not_a_row_is_refused_alike() -> None:
    # Written by a plain put before the prefix was reserved (or by a faulty peer): not a row to merge into.
    results = []
    for storage in [MemoryStorage(), SimStorage(SimDisk())]:
        m = KvStateMachine(storage, P)
        m.apply(1, PutCommand(0, KEY, b"plain", None))
        results.append(m.apply(2, MergeCommand(0, KEY, row(x=(1, 1)))))
        assert storage.get_stored(P, KEY) == Record(b"plain", 1)
    assert results[0] == results[1] and isinstance(results[0], Failure)


cells = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2))),
    max_size=3,
)


@RELAXED
@given(st.lists(st.tuples(st.sampled_from([KEY, KEY + "x", "__fs/ev/v/1/0/d"]), cells), max_size=20))
def test_replicas_applying_the_same_merges_hold_the_same_records(commands: list[tuple[str, Row]]) -> None:
    """Two engines apply one log; each key holds the join of its rows at the index of the last merge that
    changed it, and only changing merges move the applied index."""
    memory, sim = MemoryStorage(), SimStorage(SimDisk())
    machines = [KvStateMachine(memory, P), KvStateMachine(sim, P)]
    expected: dict[str, Row] = {}
    version: dict[str, int] = {}
    for index, (key, cells_of) in enumerate(commands, start=1):
        command = MergeCommand(index, key, encode_row(cells_of))
        results = [m.apply(index, command) for m in machines]
        assert results[0] == results[1]
        joined = merge_rows(expected.get(key, NOTHING), cells_of)
        if key not in expected or encode_row(joined) != encode_row(expected[key]):
            version[key] = index
        expected[key] = joined
        assert results[0] == Written(key, version[key])
    assert memory.items() == sim.items()
    assert {k: decode_row(r.value or b"") for _, k, r in memory.items()} == {
        k: decode_row(encode_row(v)) for k, v in expected.items()
    }
    assert {k: r.version for _, k, r in memory.items()} == version
    assert memory.log(P).applied_index() == sim.log(P).applied_index() == max(version.values(), default=0)
    in_version_order = [k for k, _ in sorted(version.items(), key=lambda kv: kv[1])]
    assert [k for k, _ in memory.changes_after(P, 0, 100)[0]] == in_version_order


# ---------------------------------------------------------------- check_op

LIMITS = Limits()
MODES = ["single", "leader", "leaderless"]


def refused(op: object, mode: str = "single", match: str | None = None) -> KvError:
    with pytest.raises(KvError, match=match) as info:
        check_op(op, LIMITS, mode, replicas=3)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.BAD_REQUEST
    return info.value


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prefix", EVENT_TIME_PREFIXES)
def test_a_merge_of_a_row_under_an_event_time_prefix_is_accepted(mode: str, prefix: str) -> None:
    check_op(PutOp(prefix + "v/1", row(x=(1, 1)), merge=True), LIMITS, mode, replicas=3)
    check_op(BatchPutOp((PutOp(prefix + "v/1", row(x=(1, 1)), merge=True),)), LIMITS, mode, replicas=3)


@pytest.mark.parametrize("mode", MODES)
def test_merges_are_refused_outside_the_prefixes_with_a_bad_row_or_with_settings_they_do_not_take(mode: str) -> None:
    refused(PutOp("user/1", row(x=(1, 1)), merge=True), mode, "only keys under")
    refused(PutOp("__fs/other/1", row(x=(1, 1)), merge=True), mode, "only keys under")
    refused(PutOp(KEY, b"not a row", merge=True), mode, "event-time row")
    refused(PutOp(KEY, row(x=(1, 1)), merge=True, ttl_ms=5), mode)
    if mode == "leaderless":
        refused(PutOp(KEY, row(x=(1, 1)), merge=True, consistency="linearizable"), mode, "merge takes no")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prefix", EVENT_TIME_PREFIXES)
def test_plain_writes_deletes_and_cas_under_the_prefixes_are_refused(mode: str, prefix: str) -> None:
    key = prefix + "v/1"
    refused(PutOp(key, row(x=(1, 1))), mode, "merges only")
    refused(DeleteOp(key), mode, "merges only")
    if mode != "leaderless":  # leaderless mode refuses every CAS, for its own reason
        refused(CasOp(key, None, row(x=(1, 1))), mode, "merges only")
        refused(CasOp(key, row(x=(1, 1)), None), mode, "merges only")
    error = refused(BatchPutOp((PutOp("ok", b"v"), PutOp(key, b"v"))), mode)
    assert error.message.startswith("put[1]: ")


def test_other_keys_and_reads_of_event_time_keys_are_not_affected() -> None:
    check_op(PutOp("__fs/registry", b"{}"), LIMITS)
    check_op(PutOp("user/__fs/on/1", b"v"), LIMITS)
    check_op(DeleteOp("__fs/registry"), LIMITS)
    check_op(GetOp(KEY), LIMITS)


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (ChangesOp(-1, 0, 10), "partition"),
        (ChangesOp(0, -1, 10), "after"),
        (ChangesOp(0, 0, 0), "limit"),
        (ChangesOp(0, 0, 10_001), "limit"),
        (ChangesOp(0, 0, 10, "é" * 513), "prefix"),
    ],
)
def test_a_changes_op_out_of_bounds_is_refused(op: ChangesOp, match: str) -> None:
    refused(op, "single", match)


def test_a_changes_op_within_bounds_is_accepted_in_every_mode() -> None:
    for mode in MODES:
        check_op(ChangesOp(0, 0, 10_000, "k" * 1024), LIMITS, mode, replicas=3)
        check_op(ChangesOp(5, 2**62, 1), LIMITS, mode, replicas=3)


def test_a_changes_op_past_int64_is_refused() -> None:
    refused(ChangesOp(0, 1 << 63, 10), "single", "after")
