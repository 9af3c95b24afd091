"""Limits on keys, values and requests, checked by the node (and early by the HTTP layer)."""

from __future__ import annotations

from kvstore.config import Limits
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import BatchGetOp, BatchPutOp, CasOp, ClientOp, DeleteOp, GetOp, PutOp, ScanOp


def check_key(key: object, limits: Limits) -> str:
    if not isinstance(key, str) or not key:
        raise KvError(ErrorCode.BAD_KEY, "key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise KvError(ErrorCode.BAD_KEY, "key is not valid UTF-8") from exc
    if size > limits.max_key_bytes:
        raise KvError(ErrorCode.BAD_KEY, f"key is {size} bytes; the limit is {limits.max_key_bytes}")
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
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool) or ttl_ms <= 0:
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be a positive whole number, got {ttl_ms!r}")
    if ttl_ms > MAX_TTL_MS:
        raise KvError(ErrorCode.BAD_REQUEST, f"ttl must be at most {MAX_TTL_MS} ms (100 years), got {ttl_ms}")
    return ttl_ms


def check_op(op: ClientOp, limits: Limits) -> None:
    """Raise ``KvError`` if ``op`` breaks a limit; the node refuses such an op before doing anything."""
    if isinstance(op, (GetOp, DeleteOp)):
        check_key(op.key, limits)
    elif isinstance(op, PutOp):
        check_key(op.key, limits)
        check_value(op.value, limits)
        check_ttl_ms(op.ttl_ms)
    elif isinstance(op, CasOp):
        check_key(op.key, limits)
        if op.expected is not None:
            check_value(op.expected, limits)
        if op.new is not None:
            check_value(op.new, limits)
        check_ttl_ms(op.ttl_ms)
    elif isinstance(op, ScanOp):
        if not isinstance(op.start, str) or (op.end is not None and not isinstance(op.end, str)):
            raise KvError(ErrorCode.BAD_REQUEST, "scan bounds must be strings")
        if op.end is not None and op.end < op.start:
            raise KvError(ErrorCode.BAD_REQUEST, "scan end must not be before start")
        if not isinstance(op.limit, int) or not 1 <= op.limit <= limits.max_scan_limit:
            raise KvError(ErrorCode.BAD_REQUEST, f"scan limit must be 1..{limits.max_scan_limit}")
    elif isinstance(op, (BatchGetOp, BatchPutOp)):
        entries = op.keys if isinstance(op, BatchGetOp) else op.items
        if not entries:
            raise KvError(ErrorCode.BAD_REQUEST, "a batch needs at least one entry")
        if len(entries) > limits.max_batch_keys:
            raise KvError(ErrorCode.TOO_LARGE, f"a batch holds at most {limits.max_batch_keys} entries")
        if isinstance(op, BatchGetOp):
            for key in op.keys:
                check_key(key, limits)
        else:
            for item in op.items:
                check_op(item, limits)
    else:
        raise KvError(ErrorCode.BAD_REQUEST, f"unknown operation {type(op).__name__}")


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """The ``[start, end)`` range holding exactly the keys that start with ``prefix``."""
    if not prefix:
        return "", None
    # Strip trailing max code points, then bump the last one: every key with the prefix sorts below it.
    trimmed = prefix.rstrip(chr(0x10FFFF))
    if not trimmed:
        return prefix, None
    return prefix, trimmed[:-1] + chr(ord(trimmed[-1]) + 1)
