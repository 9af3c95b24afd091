"""The codec refuses hostile frames with CodecError: nesting, lengths, and fields of the wrong type.

A peer frame is signed, but a bug, an older version or a replayed frame can still hold anything, and
whatever the codec lets through reaches ``Node.step``. Frames are built by hand here (``ext``), since
the encoder only writes well-typed messages.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any, Literal

import msgpack
import pytest

from kvstore import codec
from kvstore.codec import MAX_MESSAGE_DEPTH, CodecError, decode, encode, register
from kvstore.messages import (
    NODE_PARTITION,
    BatchPutOp,
    Forward,
    ForwardReply,
    GetOp,
    Message,
    PutOp,
    Written,
)


def ext(name: str, *fields: object) -> msgpack.ExtType:
    """A registered-message ext value holding exactly ``fields``, whatever their types."""
    return msgpack.ExtType(1, msgpack.packb([name, *fields], use_bin_type=True))


def frame(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def nested_messages(depth: int) -> bytes:
    """``depth`` Messages, each the body of the next, around a GetOp: ``depth + 1`` nested messages."""
    data = encode(GetOp("k"))
    for _ in range(depth):
        header = msgpack.packb(["Message", "n1", "n2", 0], use_bin_type=True)
        # Replace the 4-element array header with a 5-element one and append the inner message.
        data = frame(msgpack.ExtType(1, b"\x95" + header[1:] + data))
    return data


# ---------------------------------------------------------------- nesting and lengths


def test_deeply_nested_messages_are_refused_in_a_process_that_survives() -> None:
    # Before the depth bound, ~200 nested messages segfaulted inside msgpack's C extension; run the
    # decode in a child so that a regression fails this test instead of killing the test run.
    script = textwrap.dedent(
        """
        import sys
        import msgpack
        from kvstore.codec import CodecError, decode
        for depth, data in msgpack.unpackb(sys.stdin.buffer.read()):
            try:
                decode(data)
            except CodecError as exc:
                print(depth, exc)
        """
    )
    frames = msgpack.packb([(depth, nested_messages(depth)) for depth in (200, 2000)], use_bin_type=True)
    done = subprocess.run([sys.executable, "-c", script], input=frames, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines() == [
        f"200 messages nested more than {MAX_MESSAGE_DEPTH} deep",
        f"2000 messages nested more than {MAX_MESSAGE_DEPTH} deep",
    ]


def test_messages_nest_up_to_the_bound_and_no_further() -> None:
    innermost = decode(nested_messages(MAX_MESSAGE_DEPTH - 1))
    for _ in range(MAX_MESSAGE_DEPTH - 1):
        assert isinstance(innermost, Message)
        innermost = innermost.body
    assert innermost == GetOp("k")
    with pytest.raises(CodecError, match=f"^messages nested more than {MAX_MESSAGE_DEPTH} deep$"):
        decode(nested_messages(MAX_MESSAGE_DEPTH))


def test_the_deepest_real_message_is_well_within_the_bound() -> None:
    deepest = Message("n1", "n2", NODE_PARTITION, Forward(1, 2, 3, BatchPutOp((PutOp("k", b"v"),))))
    assert decode(encode(deepest)) == deepest


@pytest.mark.parametrize("depth", [100, 1000])
def test_arrays_nested_within_msgpacks_limit_decode(depth: int) -> None:
    value = decode(b"\x91" * depth + b"\xc0")
    for _ in range(depth):
        assert type(value) is tuple and len(value) == 1
        value = value[0]
    assert value is None


@pytest.mark.parametrize("depth", [10_000, 100_000])
@pytest.mark.parametrize("header", [b"\x91", b"\x81\xc0"], ids=["array", "map"])
def test_arrays_and_maps_nested_past_msgpacks_limit_are_refused(depth: int, header: bytes) -> None:
    with pytest.raises(CodecError, match=r"^undecodable message: arrays or maps nested too deeply$"):
        decode(header * depth + b"\xc0")


def test_arrays_nested_inside_a_message_field_are_refused() -> None:
    with pytest.raises(CodecError, match=r"^undecodable message: arrays or maps nested too deeply$"):
        decode(frame(msgpack.ExtType(1, b"\x92\xa5GetOp" + b"\x91" * 10_000 + b"\xc0")))


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff\xc0",  # array32 claiming 2**32 - 1 items
        b"\xdf\xff\xff\xff\xff\xc0\xc0",  # map32 claiming 2**32 - 1 pairs
        b"\xdb\xff\xff\xff\xffabc",  # str32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xffabc",  # bin32 claiming 4 GiB
        b"\xc9\xff\xff\xff\xff\x01abc",  # ext32 claiming 4 GiB
    ],
    ids=["array", "map", "str", "bin", "ext"],
)
def test_lengths_beyond_the_frame_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"^undecodable message: "):
        decode(data)


# ---------------------------------------------------------------- fields of protocol messages


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            ext("Forward", 1, 2, 0, 5),
            "Forward.op must be GetOp | PutOp | DeleteOp | CasOp | ScanOp | BatchGetOp | "
            "BatchPutOp | ChangesOp | ScanPartitionsOp, got int 5",
        ),
        (
            ext("Forward", 1, 2, 0, ext("Written", "k", 1)),
            "Forward.op must be GetOp | PutOp | DeleteOp | CasOp | "
            "ScanOp | BatchGetOp | BatchPutOp | ChangesOp | ScanPartitionsOp, got Written",
        ),
        (ext("Message", "n1", "n2", "5", ext("GetOp", "k")), "Message.partition must be int64, got str"),
        (ext("Message", "n1", 2, 5, ext("GetOp", "k")), "Message.dst must be str, got int 2"),
        (ext("Message", "n1", "n2", 5, 7), "Message.body must be a registered message, got int 7"),
        (ext("Message", "n1", "n2", 5, (1,)), "Message.body must be a registered message, got tuple"),
        (
            ext("Message", "n1", "n2", 5, msgpack.Timestamp(1)),
            "Message.body must be a registered message, got Timestamp",
        ),
        (ext("PutOp", "k", "v"), "PutOp.value must be bytes, got str"),
        (ext("PutOp", "k", b"v", True), "PutOp.ttl_ms must be int64 | None, got bool"),
        (ext("PutOp", "k", b"v", 1.5), "PutOp.ttl_ms must be int64 | None, got float 1.5"),
        (ext("PutOp", "k", b"v", 2**63), "PutOp.ttl_ms must be int64 | None, got an int outside signed 64 bits"),
        (ext("PutOp", "k", b"v", 2**64 - 1), "PutOp.ttl_ms must be int64 | None, got an int outside signed 64 bits"),
        (ext("GetOp", None), "GetOp.key must be str, got NoneType"),
        (
            ext("ScanPartitionsOp", (1, "2"), "", None, 5),
            "ScanPartitionsOp.partitions must be tuple[int64, ...], got tuple",
        ),
        (ext("ScanPartitionsOp", [1, 2], "", None, 5.0), "ScanPartitionsOp.limit must be int64, got float 5.0"),
        (ext("BatchPutOp", (ext("GetOp", "k"),)), "BatchPutOp.items must be tuple[PutOp, ...], got tuple"),
        (ext("BatchGetOp", {"k": 1}), "BatchGetOp.keys must be tuple[str, ...], got dict"),
        (
            ext("ForwardReply", 1, 2, 3, ext("GetOp", "k")),
            "ForwardReply.result must be Found | Written | Deleted | FoundSiblings | Stored | ScanPage | BatchResults "
            "| ChangesPage | Failure, got GetOp",
        ),
        (ext("Deleted", "k", 1), "Deleted.existed must be bool, got int 1"),
        (ext("Failure", 1, "x"), "Failure.code must be str, got int 1"),
        # The innermost bad field is named, however deep it sits.
        (
            ext("Message", "n1", "n2", 5, ext("Forward", 1, 2, 0, ext("PutOp", "k", 1))),
            "PutOp.value must be bytes, got int 1",
        ),
        (ext("PutOp", "k", b"v", 1, "", "", b"", "", 2), "PutOp.merge must be bool, got int 2"),
        (ext("PutOp", "k", b"v", 1, "", "", b"", "", False, 2), "PutOp has 8 fields (2 required), got 9"),
        (ext("PutOp", "k", b"v", 1, 2), "PutOp.replication must be str, got int 2"),
        (ext("PutOp", "k"), "PutOp has 8 fields (2 required), got 1"),
        (ext("Nope", 1), "unknown message type 'Nope'"),
        (msgpack.ExtType(2, b"\x91\xa5GetOp"), "unknown msgpack ext type 2"),
        (msgpack.ExtType(1, frame({"GetOp": "k"})), "malformed message payload"),
        (msgpack.ExtType(1, frame([])), "malformed message payload"),
        (msgpack.ExtType(1, frame([1, "k"])), "malformed message payload"),
    ],
)
def test_mistyped_fields_are_refused_naming_class_and_field(value: object, error: str) -> None:
    with pytest.raises(CodecError) as raised:
        decode(frame(value))
    assert str(raised.value) == error


def test_a_frame_may_omit_trailing_fields_that_have_defaults() -> None:
    assert decode(frame(ext("PutOp", "k", b"v"))) == PutOp("k", b"v", None)


def test_bounds_of_signed_64_bits_are_accepted() -> None:
    for ttl in (-(2**63), 2**63 - 1):
        assert decode(frame(ext("PutOp", "k", b"v", ttl))) == PutOp("k", b"v", ttl)


def test_decoded_messages_are_real_instances_equal_to_what_was_sent() -> None:
    reply = Message("n2", "n1", 3, ForwardReply(1, 2, 3, Written("k", 4)))
    decoded = decode(encode(reply))
    assert decoded == reply and hash(decoded) == hash(reply)
    assert type(decoded.body.result) is Written
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.partition = 4


# ---------------------------------------------------------------- the annotation vocabulary


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Mode(StrEnum):
    FAST = "fast"


@register
@dataclass(frozen=True)
class CodecVocabInner:
    n: int


@register
@dataclass(frozen=True)
class CodecVocab:
    flag: bool
    ratio: float
    colour: Colour
    level: Level
    mode: Mode | None
    kind: Literal["a", "b", 1]
    pair: tuple[int, str]
    empty: tuple[()]
    tags: frozenset[str]
    counts: dict[str, int]
    levels: tuple[Level, ...]
    by_colour: dict[Colour, frozenset[Level]]
    inner: CodecVocabInner | None
    numbers: list[int]


VOCAB = CodecVocab(
    flag=True,
    ratio=0.5,
    colour=Colour.BLUE,
    level=Level.HIGH,
    mode=Mode.FAST,
    kind=1,
    pair=(7, "x"),
    empty=(),
    tags=frozenset({"b", "a"}),
    counts={"a": 1},
    levels=(Level.LOW, Level.HIGH),
    by_colour={Colour.RED: frozenset({Level.LOW})},
    inner=CodecVocabInner(3),
    numbers=[1, 2],
)


def vocab_fields(**changes: object) -> list[object]:
    """The wire field values of VOCAB (enums as values, sets as sorted arrays), with ``changes``."""
    wire: dict[str, object] = {
        "flag": True,
        "ratio": 0.5,
        "colour": "blue",
        "level": 2,
        "mode": "fast",
        "kind": 1,
        "pair": [7, "x"],
        "empty": [],
        "tags": ["a", "b"],
        "counts": {"a": 1},
        "levels": [1, 2],
        "by_colour": {"red": [1]},
        "inner": ext("CodecVocabInner", 3),
        "numbers": [1, 2],
    }
    wire.update(changes)
    return list(wire.values())


def test_every_supported_annotation_round_trips_with_its_python_types() -> None:
    decoded = decode(encode(VOCAB))
    assert decoded == dataclasses.replace(VOCAB, numbers=(1, 2))  # type: ignore[arg-type]
    assert decoded.colour is Colour.BLUE and decoded.level is Level.HIGH and decoded.mode is Mode.FAST
    assert decoded.levels == (Level.LOW, Level.HIGH) and all(type(v) is Level for v in decoded.levels)
    assert type(decoded.tags) is frozenset
    assert decoded.by_colour == {Colour.RED: frozenset({Level.LOW})}
    assert [type(k) for k in decoded.by_colour] == [Colour]
    # A list field is checked but stays the tuple msgpack decodes; the simulator reports such a class.
    assert decoded.numbers == (1, 2)


def test_a_float_field_takes_an_int() -> None:
    assert decode(frame(ext("CodecVocab", *vocab_fields(ratio=2)))).ratio == 2


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"flag": 1}, "CodecVocab.flag must be bool, got int 1"),
        ({"ratio": float("nan")}, "CodecVocab.ratio must be float, got float nan"),
        ({"ratio": float("inf")}, "CodecVocab.ratio must be float, got float inf"),
        ({"ratio": True}, "CodecVocab.ratio must be float, got bool"),
        ({"colour": "green"}, "CodecVocab.colour must be Colour, got str"),
        ({"colour": Colour.RED.name}, "CodecVocab.colour must be Colour, got str"),
        ({"level": 3}, "CodecVocab.level must be Level, got int 3"),
        ({"level": True}, "CodecVocab.level must be Level, got bool"),
        ({"mode": "slow"}, "CodecVocab.mode must be Mode | None, got str"),
        ({"kind": "c"}, "CodecVocab.kind must be one of 'a', 'b', 1, got str"),
        ({"kind": True}, "CodecVocab.kind must be one of 'a', 'b', 1, got bool"),
        ({"pair": [7]}, "CodecVocab.pair must be tuple[int64, str], got tuple"),
        ({"pair": ["x", 7]}, "CodecVocab.pair must be tuple[int64, str], got tuple"),
        ({"empty": [1]}, "CodecVocab.empty must be tuple[], got tuple"),
        ({"tags": ["a", 1]}, "CodecVocab.tags must be frozenset[str], got tuple"),
        ({"counts": {"a": "1"}}, "CodecVocab.counts must be dict[str, int64], got dict"),
        ({"counts": {1: 1}}, "CodecVocab.counts must be dict[str, int64], got dict"),
        ({"counts": [["a", 1]]}, "CodecVocab.counts must be dict[str, int64], got tuple"),
        ({"levels": [1, 5]}, "CodecVocab.levels must be tuple[Level, ...], got tuple"),
        ({"by_colour": {"red": [{}]}}, "CodecVocab.by_colour must be dict[Colour, frozenset[Level]], got dict"),
        ({"inner": ext("GetOp", "k")}, "CodecVocab.inner must be CodecVocabInner | None, got GetOp"),
        ({"inner": ext("CodecVocabInner", "3")}, "CodecVocabInner.n must be int64, got str"),
        ({"numbers": [1, "2"]}, "CodecVocab.numbers must be list[int64], got tuple"),
    ],
)
def test_values_outside_an_annotation_are_refused(changes: dict[str, object], error: str) -> None:
    with pytest.raises(CodecError) as raised:
        decode(frame(ext("CodecVocab", *vocab_fields(**changes))))
    assert str(raised.value) == error


# ---------------------------------------------------------------- annotations the codec cannot check


class FloatEnum(Enum):
    HALF = 0.5


@dataclass(frozen=True)
class CodecUnregistered:
    n: int


@dataclass(frozen=True)
class BadAny:
    x: Any


@dataclass(frozen=True)
class BadBareTuple:
    x: tuple  # type: ignore[type-arg]


@dataclass(frozen=True)
class BadSet:
    x: set[int]


@dataclass(frozen=True)
class BadNestedAny:
    x: dict[str, Any]


@dataclass(frozen=True)
class BadUnregisteredField:
    x: CodecUnregistered


@dataclass(frozen=True)
class BadFloatLiteral:
    x: Literal[0.5]  # type: ignore[valid-type]


@dataclass(frozen=True)
class BadFloatEnum:
    x: FloatEnum


@dataclass(frozen=True)
class BadUndefinedName:
    x: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821


@dataclass(frozen=True)
class BadKeywordOnly:
    x: int = dataclasses.field(kw_only=True)


class NotADataclass:
    x: int


@pytest.mark.parametrize(
    ("cls", "error"),
    [
        (BadAny, "cannot register BadAny: field 'x': the codec cannot check values of typing.Any"),
        (BadBareTuple, "cannot register BadBareTuple: field 'x': the codec cannot check values of <class 'tuple'>"),
        (BadSet, "cannot register BadSet: field 'x': the codec cannot check values of set[int]"),
        (BadNestedAny, "cannot register BadNestedAny: field 'x': the codec cannot check values of typing.Any"),
        (
            BadUnregisteredField,
            "cannot register BadUnregisteredField: field 'x': CodecUnregistered is not registered; register it first",
        ),
        (
            BadFloatLiteral,
            "cannot register BadFloatLiteral: field 'x': Literal[0.5] has values other than NoneType, "
            "bool, bytes, int, str",
        ),
        (BadFloatEnum, "cannot register BadFloatEnum: field 'x': FloatEnum has values other than bytes, int, str"),
        (
            BadUndefinedName,
            "cannot register BadUndefinedName: name 'NotDefinedAnywhere' is not defined; define "
            "what it refers to first",
        ),
        (BadKeywordOnly, "cannot register BadKeywordOnly: field 'x' is not a positional init field"),
        (NotADataclass, "NotADataclass is not a dataclass"),
    ],
)
def test_registering_an_annotation_the_codec_cannot_check_fails(cls: type, error: str) -> None:
    with pytest.raises(TypeError) as raised:
        register(cls)
    assert str(raised.value) == error
    assert codec.registered(cls.__name__) is None
