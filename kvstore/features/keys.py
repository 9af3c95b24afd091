"""Where the feature store keeps things in the key space: every key under the reserved prefix ``__fs/``.

- ``__fs/registry``: the applied definitions and their version (``registry.py``);
- ``__fs/on/<view>/<entity>``: a view's online row for one entity: an event-time row
  (``replication.event_time``), one cell per feature, each the newest event's value;
- ``__fs/ev/<view>/<entity>/<event_ts_ms as 16 hex digits>/<digest>``: one event of the retained event log, an
  event-time row whose cells all carry the event's time. The digest is of the row, so a duplicated event is the
  same key and the same row (a merge of it changes nothing), and two different events at one time are two keys;
- ``__fs/wm/<view>``: the view's materialization watermark, an event-time row of one cell (``watermark``) whose
  time is the watermark, so that it only moves forward (``batch.py``).

Clients cannot write under the prefix through the plain key routes (``/kv``, ``/cas``, ``/batch``): only the
feature routes do, with values they checked, so a stray PUT cannot make a row undecodable.
"""

from __future__ import annotations

import hashlib

from kvstore.config import EVENT_TIME_PREFIXES, RESERVED_PREFIX
from replication.event_time import Row, encode_row

PREFIX = RESERVED_PREFIX
REGISTRY_KEY = PREFIX + "registry"
ONLINE_PREFIX = PREFIX + "on/"
EVENTS_PREFIX = PREFIX + "ev/"
WATERMARK_PREFIX = PREFIX + "wm/"
# Every key whose writes merge event-time rows (``PutOp.merge``; leaderless mode's event-time policy).
assert EVENT_TIME_PREFIXES == (ONLINE_PREFIX, EVENTS_PREFIX, WATERMARK_PREFIX)


def online_key(view: str, entity_key: str) -> str:
    return f"{ONLINE_PREFIX}{view}/{entity_key}"


def online_prefix(view: str) -> str:
    return f"{ONLINE_PREFIX}{view}/"


def events_prefix(view: str) -> str:
    return f"{EVENTS_PREFIX}{view}/"


def watermark_key(view: str) -> str:
    return f"{WATERMARK_PREFIX}{view}"


def event_row(event_ts_ms: int, values: dict[str, object]) -> Row:
    """An event as a row: every feature's cell carries the event's time."""
    return {name: (event_ts_ms, value) for name, value in values.items()}


def event_key(view: str, entity_key: str, event_ts_ms: int, encoded_row: bytes) -> str:
    digest = hashlib.blake2b(encoded_row, digest_size=8).hexdigest()
    return f"{EVENTS_PREFIX}{view}/{entity_key}/{event_ts_ms:016x}/{digest}"


def parse_event_key(key: str) -> tuple[str, str, int]:
    """``(view, entity key, event_ts_ms)`` of an event-log key; ValueError if it is not one."""
    if not key.startswith(EVENTS_PREFIX):
        raise ValueError(f"not an event-log key: {key!r:.80}")
    parts = key[len(EVENTS_PREFIX) :].split("/")
    if len(parts) != 4:
        raise ValueError(f"not an event-log key: {key!r:.80}")
    view, entity, ts, _ = parts
    return view, entity, int(ts, 16)


def parse_online_key(key: str) -> tuple[str, str]:
    """``(view, entity key)`` of an online-row key; ValueError if it is not one."""
    if not key.startswith(ONLINE_PREFIX):
        raise ValueError(f"not an online-row key: {key!r:.80}")
    view, sep, entity = key[len(ONLINE_PREFIX) :].partition("/")
    if not sep or not entity:
        raise ValueError(f"not an online-row key: {key!r:.80}")
    return view, entity


def encoded_event(event_ts_ms: int, values: dict[str, object]) -> bytes:
    return encode_row(event_row(event_ts_ms, values))
