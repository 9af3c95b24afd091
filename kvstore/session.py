"""Session tokens: the highest log position a client has seen in each partition, carried in ``X-Kv-Session``.

A node answers every key op with the request's token advanced by the answer's position (``Answer.position``:
a write's entry index, the applied index a read was served from) in the key's partition, and serves a read
that carries a token from a state at least as new as the token's entry for that partition
(``ClientCall.min_index``): read-your-writes and monotonic reads, whichever replica serves them.

The token is compact text, ``partition:index`` entries joined by ``,``, the partition used last first
(``7:120,3:98``). It stays within ``MAX_SESSION_BYTES``: entries past it are dropped from the end, so a
session spread over more partitions than fit keeps its guarantees for those it used most recently. Clients
treat it as opaque (``kvstore.client`` merges the tokens of concurrent answers with ``merge``).
"""

from __future__ import annotations

import re

SESSION_HEADER = "X-Kv-Session"
# Far below a header line's limit (``limits.max_header_bytes``): about 40 partitions at large indexes.
MAX_SESSION_BYTES = 1024
# A position is a log index: a signed 64-bit number on the wire and in storage.
MAX_POSITION = (1 << 63) - 1
_ENTRY = re.compile(r"([0-9]{1,10}):([0-9]{1,19})")

# Partition -> highest position seen, in the token's order (the partition used last first).
Positions = dict[int, int]


class SessionTokenError(ValueError):
    """A token that is not one this module writes: a client's bytes, to refuse with a clear error."""


def parse(text: str) -> Positions:
    if len(text) > MAX_SESSION_BYTES:
        raise SessionTokenError(f"session token is {len(text)} bytes; the most is {MAX_SESSION_BYTES}")
    positions: Positions = {}
    if not text:
        return positions
    for entry in text.split(","):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise SessionTokenError("session token must be partition:index entries joined by ','")
        partition, index = int(match[1]), int(match[2])
        if index > MAX_POSITION:
            raise SessionTokenError(f"session token: position of partition {partition} is out of range")
        if partition in positions:
            raise SessionTokenError(f"session token names partition {partition} twice")
        positions[partition] = index
    return positions


def render(positions: Positions) -> str:
    """The token for ``positions``, cut to ``MAX_SESSION_BYTES`` by dropping entries from the end."""
    text = ""
    for partition, index in positions.items():
        entry = f"{partition}:{index}"
        longer = f"{text},{entry}" if text else entry
        if len(longer) > MAX_SESSION_BYTES:
            break
        text = longer
    return text


def advance(positions: Positions, partition: int, position: int) -> Positions:
    """``positions`` having seen ``position`` in ``partition`` (0: nothing seen), that partition first."""
    if position <= 0 and partition not in positions:
        return positions
    highest = max(position, positions.get(partition, 0))
    return {partition: highest, **{p: i for p, i in positions.items() if p != partition}}


def merge(newer: Positions, older: Positions) -> Positions:
    """Both tokens' knowledge, each partition's highest position, in ``newer``'s order then ``older``'s."""
    merged = dict(newer)
    for partition, index in older.items():
        merged[partition] = max(index, merged.get(partition, 0))
    return merged
