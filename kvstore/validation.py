"""Limits on keys, values and requests, checked by the node (and early by the HTTP layer).

Also the decoding of encoded request inputs (base64 values, whole numbers in text) that must refuse
bad input as a definite ``bad_request`` rather than fail with an unexpected exception.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from decimal import Context, Decimal

from kvstore.codec import INT64_MAX
from kvstore.config import CONSISTENCY_LEVELS, EVENT_TIME_PREFIXES, Limits, resolve_quorum
from kvstore.errors import ErrorCode, KvError, shown
from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    CasOp,
    ChangesOp,
    ClientOp,
    DeleteOp,
    GetOp,
    PutOp,
    ScanOp,
    ScanPartitionsOp,
)
from kvstore.session import MAX_POSITION
from replication.dvv import decode_context
from replication.event_time import decode_row
from replication.leaderless import REPAIR_MODES
from replication.replica import REPLICATION_SETTINGS

# Numbers longer than this are not echoed back in error messages, only their size.
_SHOWN_DIGITS = 24


def check_key(key: object, limits: Limits) -> str:
    if not isinstance(key, str) or not key:
        raise KvError(ErrorCode.BAD_KEY, "key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise KvError(ErrorCode.BAD_KEY, "key is not valid UTF-8 (it holds a lone surrogate)") from exc
    if size > limits.max_key_bytes:
        raise KvError(ErrorCode.BAD_KEY, f"key is {size} bytes; the limit is {limits.max_key_bytes}")
    if "\x00" in key:
        # NUL ends a string for C-based clients and tools, which would name a different key.
        raise KvError(ErrorCode.BAD_KEY, "key must not contain NUL (U+0000)")
    return key


def check_value(value: object, limits: Limits) -> bytes:
    if not isinstance(value, bytes):
        raise KvError(ErrorCode.BAD_REQUEST, "value must be bytes")
    if len(value) > limits.max_value_bytes:
        raise KvError(ErrorCode.TOO_LARGE, f"value is {len(value)} bytes; the limit is {limits.max_value_bytes}")
    return value


# A hundred years: far beyond any real TTL, and small enough that now + ttl stays a 64-bit integer
# (storage and the wire keep deadlines as signed 64-bit milliseconds).
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000


def check_ttl_ms(ttl_ms: object) -> int | None:
    if ttl_ms is None:
        return None
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool):
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be a positive whole number, got {type(ttl_ms).__name__}")
    if ttl_ms <= 0:
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be a positive whole number, got {show_int(ttl_ms)}")
    if ttl_ms > MAX_TTL_MS:
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be at most {MAX_TTL_MS} ms (100 years), got {show_int(ttl_ms)}")
    return ttl_ms


def show_int(value: int) -> str:
    """``value`` for an error message: a huge one would flood it (or fail: str() refuses 4300+ digits)."""
    if -(10**_SHOWN_DIGITS) < value < 10**_SHOWN_DIGITS:
        return str(value)
    return f"a {'negative ' if value < 0 else ''}number of more than {_SHOWN_DIGITS} digits"


def check_scan_bounds(start: object, end: object) -> None:
    if not isinstance(start, str) or (end is not None and not isinstance(end, str)):
        raise KvError(ErrorCode.BAD_REQUEST, "scan bounds must be strings")
    for name, bound in (("start", start), ("end", end)):
        if bound is not None and not bound.isascii():
            try:
                bound.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise KvError(
                    ErrorCode.BAD_REQUEST, f"scan {name} is not valid UTF-8 (it holds a lone surrogate)"
                ) from exc
    if end is not None and end < start:
        raise KvError(ErrorCode.BAD_REQUEST, "scan end must not be before start")


def check_scan_limit(limit: object, limits: Limits) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= limits.max_scan_limit:
        raise KvError(ErrorCode.BAD_REQUEST, f"scan limit must be 1..{limits.max_scan_limit}")


# The largest stale-read bound: a day. A larger one means "any lag", which leaving the bound out says.
MAX_STALENESS_MS = 24 * 3600 * 1000
# What single mode serves anyway (every op there is applied and read at once, on the one copy); "" is the default.
SINGLE_MODE_READS = ("linearizable", "read-index")
SINGLE_MODE_WRITES = ("sync",)


def check_read_settings(
    consistency: object,
    max_staleness_ms: object,
    min_index: object,
    leader_mode: bool,
    default_reads: str = "read-index",
) -> None:
    """A GET's consistency, staleness bound and session position (``GetOp``): valid, and meaningful in the mode.
    ``default_reads``: how the cluster serves a read that names no consistency (its ``[replication] reads``)."""
    if consistency != "" and consistency not in CONSISTENCY_LEVELS:
        raise KvError(ErrorCode.BAD_REQUEST, f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
    if max_staleness_ms is not None:
        if type(max_staleness_ms) is not int or not 0 < max_staleness_ms <= MAX_STALENESS_MS:
            raise KvError(ErrorCode.BAD_REQUEST, f"max_staleness_ms must be 1..{MAX_STALENESS_MS}")
        if (consistency or default_reads) != "stale":
            raise KvError(ErrorCode.BAD_REQUEST, "max_staleness_ms bounds stale reads only (consistency=stale)")
    if type(min_index) is not int or not 0 <= min_index <= MAX_POSITION:
        raise KvError(ErrorCode.BAD_REQUEST, f"a session position must be 0..{MAX_POSITION}")
    if not leader_mode and consistency and consistency not in SINGLE_MODE_READS:
        raise KvError(ErrorCode.BAD_REQUEST, f"consistency={consistency} needs leader mode (single mode reads at once)")


def check_replication(replication: object, leader_mode: bool) -> None:
    """A write's replication setting (``PutOp.replication``): valid, and meaningful in the mode."""
    if replication != "" and replication not in REPLICATION_SETTINGS:
        raise KvError(ErrorCode.BAD_REQUEST, f"replication must be one of {', '.join(REPLICATION_SETTINGS)}")
    if not leader_mode and replication and replication not in SINGLE_MODE_WRITES:
        message = f"replication={replication} needs leader mode (single mode writes one copy)"
        raise KvError(ErrorCode.BAD_REQUEST, message)


# What leaderless mode serves: a quorum read, or an ABD one; "" is the default (a quorum read).
LEADERLESS_READS = ("", "linearizable")


def check_leaderless_read(op: GetOp, leaderless: bool, replicas: int) -> None:
    """A GET's quorum and repair settings (``GetOp.r``, ``repair``): valid, and only in leaderless mode, which
    takes no other read setting than ``consistency=linearizable``."""
    if not leaderless:
        if op.r or op.repair:
            raise KvError(ErrorCode.BAD_REQUEST, "r and repair need leaderless mode")
        return
    if op.consistency not in LEADERLESS_READS or op.max_staleness_ms is not None or op.min_index:
        raise KvError(
            ErrorCode.BAD_REQUEST,
            "leaderless mode reads from a quorum (r=) or, with consistency=linearizable, by ABD; "
            "other consistency settings, staleness bounds and sessions need leader mode",
        )
    if op.r:
        check_quorum(op.r, "r", replicas)
    if op.repair and op.repair not in REPAIR_MODES:
        raise KvError(ErrorCode.BAD_REQUEST, f"repair must be one of {', '.join(REPAIR_MODES)}")


def check_leaderless_write(op: PutOp | DeleteOp, leaderless: bool, replicas: int) -> None:
    """A write's quorum and causal context (``w``, ``context``): valid, and only in leaderless mode, which
    takes no replication setting and no TTL."""
    if not leaderless:
        if op.w or op.context or op.consistency:
            raise KvError(
                ErrorCode.BAD_REQUEST,
                "w, consistency and a causal context (X-Kv-Context) on a write need leaderless mode",
            )
        return
    if op.consistency not in LEADERLESS_READS:
        raise KvError(ErrorCode.BAD_REQUEST, "a leaderless write's consistency is linearizable (ABD) or left out")
    if op.replication:
        raise KvError(ErrorCode.BAD_REQUEST, "replication settings need leader mode; leaderless writes take w=")
    if isinstance(op, PutOp) and op.ttl_ms is not None:
        raise KvError(ErrorCode.BAD_REQUEST, "TTLs are not supported in leaderless mode")
    if op.w:
        check_quorum(op.w, "w", replicas)
    if op.context:
        try:
            decode_context(op.context)
        except ValueError as exc:
            raise KvError(
                ErrorCode.BAD_REQUEST, f"the causal context is not one this cluster gave out ({exc})"
            ) from None


def check_quorum(text: str, name: str, replicas: int) -> int:
    try:
        return resolve_quorum(text, replicas)
    except ValueError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"{name}: {exc}") from None


def check_op(
    op: ClientOp | ScanPartitionsOp,
    limits: Limits,
    mode: str = "single",
    default_reads: str = "read-index",
    replicas: int = 1,
) -> None:
    """Raise ``KvError`` if ``op`` breaks a limit or asks for a setting the cluster's ``mode`` does not have;
    the node refuses such an op before doing anything. ``replicas``: copies per partition (quorums count them).

    Types are not checked here beyond what a limit needs: client ops are built by the HTTP layer and
    peer ops are type-checked by the codec.
    """
    leader_mode, leaderless = mode == "leader", mode == "leaderless"
    if isinstance(op, GetOp):
        check_key(op.key, limits)
        if op.r or op.repair or leaderless:
            check_leaderless_read(op, leaderless, replicas)
        elif op.consistency or op.max_staleness_ms is not None or op.min_index:
            check_read_settings(op.consistency, op.max_staleness_ms, op.min_index, leader_mode, default_reads)
    elif isinstance(op, DeleteOp):
        check_key(op.key, limits)
        check_not_merged(op.key)
        if op.w or op.context or op.consistency or leaderless:
            check_leaderless_write(op, leaderless, replicas)
        elif op.replication:
            check_replication(op.replication, leader_mode)
    elif isinstance(op, PutOp):
        check_key(op.key, limits)
        check_value(op.value, limits)
        check_ttl_ms(op.ttl_ms)
        if op.merge or op.key.startswith(EVENT_TIME_PREFIXES):
            check_merge(op)
        if op.w or op.context or op.consistency or leaderless:
            check_leaderless_write(op, leaderless, replicas)
        elif op.replication:
            check_replication(op.replication, leader_mode)
    elif isinstance(op, CasOp):
        if leaderless:
            raise KvError(
                ErrorCode.BAD_REQUEST,
                "compare-and-set needs single or leader mode; in leaderless mode, write with the causal context "
                "of your read (X-Kv-Context) to replace exactly what it returned",
            )
        check_key(op.key, limits)
        check_not_merged(op.key)
        if op.replication:
            check_replication(op.replication, leader_mode)
        if op.expected is not None:
            check_value(op.expected, limits)
        if op.new is not None:
            check_value(op.new, limits)
        check_ttl_ms(op.ttl_ms)
    elif isinstance(op, ScanOp):
        check_scan_bounds(op.start, op.end)
        check_scan_limit(op.limit, limits)
    elif isinstance(op, ScanPartitionsOp):
        check_scan_bounds(op.start, op.end)
        check_scan_limit(op.limit, limits)
        # A partition named twice would be scanned twice and its keys returned twice.
        if not op.partitions or len(set(op.partitions)) != len(op.partitions):
            raise KvError(ErrorCode.BAD_REQUEST, "a partition scan needs distinct partitions")
        if op.epochs and len(op.epochs) != len(op.partitions):
            raise KvError(ErrorCode.BAD_REQUEST, "a partition scan names one epoch per partition, or none")
    elif isinstance(op, ChangesOp):
        check_changes(op, limits)
    elif isinstance(op, (BatchGetOp, BatchPutOp)):
        entries = op.keys if isinstance(op, BatchGetOp) else op.items
        if not entries:
            raise KvError(ErrorCode.BAD_REQUEST, "a batch needs at least one entry")
        if len(entries) > limits.max_batch_keys:
            raise KvError(ErrorCode.TOO_LARGE, f"a batch holds at most {limits.max_batch_keys} entries")
        where = "get" if isinstance(op, BatchGetOp) else "put"
        for index, entry in enumerate(entries):
            try:
                if isinstance(entry, PutOp):
                    check_op(entry, limits, mode, default_reads, replicas)
                else:
                    check_key(entry, limits)
            except KvError as exc:
                # Name the entry: one bad entry refuses the whole batch, and the user must find it.
                raise KvError(exc.code, f"{where}[{index}]: {exc.message}") from None
    else:
        raise KvError(ErrorCode.BAD_REQUEST, f"unknown operation {type(op).__name__}")


def check_merge(op: PutOp) -> None:
    """A merge writes an event-time row to a key that holds them, and nothing else writes such a key."""
    if not op.key.startswith(EVENT_TIME_PREFIXES):
        raise KvError(ErrorCode.BAD_REQUEST, f"only keys under {', '.join(EVENT_TIME_PREFIXES)} take merges")
    if not op.merge:
        raise KvError(ErrorCode.BAD_REQUEST, f"keys under {', '.join(EVENT_TIME_PREFIXES)} are written by merges only")
    if op.ttl_ms is not None or op.context or op.consistency:
        raise KvError(ErrorCode.BAD_REQUEST, "a merge takes no TTL, context or consistency: event times order it")
    try:
        decode_row(op.value)
    except ValueError as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"a merge's value must be an event-time row: {exc}") from None


def check_not_merged(key: str) -> None:
    if key.startswith(EVENT_TIME_PREFIXES):
        raise KvError(ErrorCode.BAD_REQUEST, f"keys under {', '.join(EVENT_TIME_PREFIXES)} are written by merges only")


# The most changes a page of the change feed holds.
MAX_CHANGES_PAGE = 10_000


def check_changes(op: ChangesOp, limits: Limits) -> None:
    if op.partition < 0:
        raise KvError(ErrorCode.BAD_REQUEST, f"partition must be >= 0, got {op.partition}")
    if not 0 <= op.after <= INT64_MAX:
        raise KvError(ErrorCode.BAD_REQUEST, f"after must be a position from 0 to {INT64_MAX}, got {op.after}")
    if not 1 <= op.limit <= MAX_CHANGES_PAGE:
        raise KvError(ErrorCode.BAD_REQUEST, f"limit must be 1 to {MAX_CHANGES_PAGE}, got {op.limit}")
    if len(op.prefix.encode()) > limits.max_key_bytes:
        raise KvError(ErrorCode.BAD_REQUEST, f"prefix is longer than a key may be ({limits.max_key_bytes})")


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """The ``[start, end)`` range holding exactly the keys that start with ``prefix``."""
    if not prefix:
        return "", None
    # Strip trailing max code points, then bump the last one: every key with the prefix sorts below it.
    trimmed = prefix.rstrip(chr(0x10FFFF))
    if not trimmed:
        return prefix, None
    return prefix, trimmed[:-1] + chr(ord(trimmed[-1]) + 1)


# ---------------------------------------------------------------- encoded inputs

_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# A decimal number as JSON and Python's repr write it: not "inf", "nan", "1_0", " 1" or non-ASCII digits.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Far longer than any meaningful number, short enough that parsing one costs nothing.
_MAX_NUMBER_CHARS = 64
_EXACT = Context(prec=2 * _MAX_NUMBER_CHARS)
_ONE_MS_IN_S = Decimal("0.001")


def parse_whole_number(text: str, name: str) -> int:
    """A base-10 integer in ASCII digits; ``int()`` would also take "1_000", " 1" and non-ASCII digits."""
    if not _WHOLE_NUMBER.fullmatch(text):
        raise KvError(ErrorCode.BAD_REQUEST, f"{name} must be a whole number in ASCII digits, got {shown(text)}")
    if len(text) > _MAX_NUMBER_CHARS:
        raise KvError(ErrorCode.BAD_REQUEST, f"{name} is out of range ({len(text)} digits)")
    return int(text)


def ttl_ms_from_seconds(text: str) -> int:
    """A TTL given in seconds (``1.5``, ``2``, ``1e-3``) as whole ms, rounded up; checked like ``ttl_ms``.

    Exact decimal arithmetic: as a float, 1.1 s is 1100.0000000000002 ms and would round up to 1101,
    and 1e308 s overflows to infinity.
    """
    if len(text) > _MAX_NUMBER_CHARS or not _DECIMAL.fullmatch(text):
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be a decimal number of seconds, got {shown(text)}")
    seconds = Decimal(text)
    if seconds <= 0:
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be a positive number of seconds, got {shown(text)}")
    # Bounded before scaling, so the scaling is exact: an input has at most _MAX_NUMBER_CHARS digits.
    if seconds <= _ONE_MS_IN_S:
        return 1
    if seconds > MAX_TTL_MS // 1000:
        raise KvError(
            ErrorCode.BAD_REQUEST, f"ttl must be at most {MAX_TTL_MS // 1000} s (100 years), got {shown(text)}"
        )
    ttl_ms: int = math.ceil(seconds.scaleb(3, _EXACT))
    return ttl_ms


def decode_base64(text: object, field: str) -> bytes:
    """Standard base64 (with padding) as bytes; ``bad_request`` for anything else.

    ``base64.b64decode`` raises ValueError, not ``binascii.Error``, for a str holding non-ASCII text.
    """
    if not isinstance(text, str):
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} must be a string")
    if not text.isascii():
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} is not valid base64 (it holds non-ASCII characters)")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise KvError(ErrorCode.BAD_REQUEST, f"{field} is not valid base64") from exc
