"""The encoder's reusable packer chain writes exactly the bytes of a fresh packer per message level.

``kvstore.codec`` packs with one reusable ``msgpack.Packer`` per nesting level and per thread. The
reference here is the plain way: ``msgpack.packb`` with a new packer for every message, its payload
``[type name, field values...]``.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack
import pytest

from kvstore import codec
from kvstore.codec import decode, encode
from kvstore.messages import BatchPutOp, Forward, GetOp, Message, PutOp


def reference(obj: object) -> bytes:
    def default(value: object) -> object:
        names = codec._fields.get(type(value))
        if names is not None:
            payload = [type(value).__name__, *(getattr(value, n) for n in names)]
            return msgpack.ExtType(1, msgpack.packb(payload, default=default, use_bin_type=True))
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        raise TypeError(f"not a registered message: {value!r}")

    data: bytes = msgpack.packb(obj, default=default, use_bin_type=True)
    return data


def nested(depth: int) -> Message:
    body: Any = GetOp("k")
    for i in range(depth):
        body = Message("n1", "n2", i, body)
    return body  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CodecTestUnregistered:
    x: int


VALUES = [
    Message("n1", "n2", 3, Forward(1, 2, 3, BatchPutOp((PutOp("k", b"v", 5),)))),
    ("deliver", 12, "n2", 12, b"\x00wire"),
    ("submit", 0, "n1", 1, GetOp("k"), frozenset({3, 1, 2})),
    nested(codec._CHAINED_LEVELS + 5),  # past the chain: fresh packers again
]


@pytest.mark.parametrize("value", VALUES, ids=["forward", "plain tuple", "tuple with message", "deep"])
def test_bytes_equal_a_fresh_packer_per_level(value: object) -> None:
    assert encode(value) == reference(value)


def test_a_failed_encode_leaves_no_bytes_behind() -> None:
    # The unencodable value sits at several depths: each packer it passed through must start clean after.
    unregistered = CodecTestUnregistered(1)
    for bad in (unregistered, ("x", unregistered), Message("a", "b", 1, unregistered),
                Message("a", "b", 1, Message("a", "b", 2, unregistered))):
        with pytest.raises(TypeError, match="not a registered message"):
            encode(bad)
        for value in VALUES:
            assert encode(value) == reference(value)


def test_threads_never_share_a_chain() -> None:
    messages = [Message("n1", "n2", i, Forward(i, i, i, PutOp(f"k{i}", bytes(i % 256)))) for i in range(300)]
    expected = [reference(m) for m in messages]
    results: dict[int, list[bytes]] = {}

    def work(slot: int) -> None:
        results[slot] = [encode(m) for _ in range(20) for m in messages][-len(messages):]

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    # Switch threads as often as the interpreter allows, so that one lands inside another's encode.
    interval_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval_s)
    assert all(results[slot] == expected for slot in range(4))
    assert all(decode(data) == m for data, m in zip(expected, messages, strict=True))


def test_a_large_message_does_not_keep_its_buffers() -> None:
    encode(GetOp("k"))
    free_before = list(codec._free_chains)
    assert free_before  # the chain that encoded GetOp was returned
    big = Message("n1", "n2", 0, PutOp("k", bytes(codec._MAX_RETAINED_BYTES)))
    assert decode(encode(big)) == big
    # The chain that packed the big message took one from the free list and was dropped with its grown buffers.
    assert len(codec._free_chains) == len(free_before) - 1
    assert all(chain in free_before for chain in codec._free_chains)
    assert encode(GetOp("k")) == reference(GetOp("k"))


def test_free_chains_stay_bounded() -> None:
    chains = [codec._packer_chain() for _ in range(2 * codec._MAX_FREE_CHAINS)]
    codec._free_chains.extend(chains[: codec._MAX_FREE_CHAINS - len(codec._free_chains)])
    encode(GetOp("k"))
    assert len(codec._free_chains) <= codec._MAX_FREE_CHAINS
