"""Hostile frames on a live node's ``POST /peer``: malformed, truncated, oversized, deeply nested,
mistyped and replayed, each signed with the cluster secret, unsigned, or badly signed.

The node runs in a separate process: nesting a few hundred msgpack ext values once crashed a node
with a segfault inside msgpack's C extension, which in-process would have killed pytest. After every
example the node must still be running, answer ``GET /health``, and write and read back a key.

Frames claim to come from n2, a member of the cluster that never runs; its replies fail to send.
"""

from __future__ import annotations

import enum
import http.client
import itertools
import select
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvstore import codec
from kvstore.config import ClusterConfig, Limits
from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    CasOp,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    GetOp,
    Message,
    PutOp,
    ScanPartitionsOp,
    Written,
)
from kvstore.server.inprocess import loopback_config
from kvstore.server.peer import FROM_HEADER, PEER_PATH, SIGNATURE_HEADER, peer_body_limit_bytes, sign
from partitioning.partition_map import PartitionMap

if TYPE_CHECKING:
    from tests.conftest import NodeProcess

# A small value limit keeps the peer body limit, and so an oversized frame, near its 3 MiB floor.
CONFIG = loopback_config(2, partitions=4, limits=Limits(max_value_bytes=4096))
NODE, SENDER = "n1", "n2"
LIMIT_BYTES = peer_body_limit_bytes(CONFIG.limits.max_value_bytes)
INT64_MAX = (1 << 63) - 1
# A bound on one exchange with a local node, never a measure of speed.
REQUEST_TIMEOUT_S = 30
# How long a node that dropped a connection unanswered gets to exit, if it is crashing.
EXIT_WAIT_S = 10
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    # The node fixture is per test, not per example, on purpose: examples share the running node.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


class Signing(enum.Enum):
    SIGNED = "signed with the cluster secret"
    UNSIGNED = "no signature header"
    WRONG_SECRET = "signed with another secret"
    GARBLED = "a signature that is not hex, nor ASCII"


SIGNINGS = st.sampled_from(Signing)


def signature_headers(body: bytes, signing: Signing) -> dict[str, str]:
    if signing is Signing.SIGNED:
        return {SIGNATURE_HEADER: sign(CONFIG.secret, body)}
    if signing is Signing.WRONG_SECRET:
        return {SIGNATURE_HEADER: sign(CONFIG.secret + "-not", body)}
    if signing is Signing.GARBLED:
        return {SIGNATURE_HEADER: "z\xe9" * 32}
    return {}


def refusal(signing: Signing, signed_status: int) -> int:
    """The status for a frame a signed copy of which gets ``signed_status``: unsigned frames are 401,
    and badly signed ones too, except that a body too large is refused before it is read to check its
    signature."""
    if signing is Signing.SIGNED:
        return signed_status
    if signing is Signing.UNSIGNED:
        return 401
    return 413 if signed_status == 413 else 401


# ---------------------------------------------------------------- talking to the node


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def post_peer(node: NodeProcess, body: Iterable[bytes], headers: dict[str, str], length: int | None) -> Answer:
    """``POST /peer`` over a raw socket: with ``length`` as Content-Length, or chunked when None.

    The body is sent only while the node reads it: once it answers (413 before reading a body declared
    too long, say), sending stops, so the answer is never lost to a reset.
    """
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST {PEER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{framing}\r\n{head}\r\n"
    address = CONFIG.node(node.node_id)
    with socket.create_connection((address.host, address.port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(request.encode("latin-1"))
        parts = body if length is not None else _chunked(body)
        _send_until_answered(sock, parts)
        return _read_answer(sock)


def _chunked(parts: Iterable[bytes]) -> Iterable[bytes]:
    for part in parts:
        if part:
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def _send_until_answered(sock: socket.socket, parts: Iterable[bytes]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            readable, writable, _ = select.select([sock], [sock], [], REQUEST_TIMEOUT_S)
            if readable:
                return
            if not writable:
                raise TimeoutError("the node neither read the body nor answered")
            try:
                view = view[sock.send(view) :]
            except (BrokenPipeError, ConnectionResetError):
                return


def _read_answer(sock: socket.socket) -> Answer:
    # Read by Content-Length, not to EOF: a node that answered before reading the body may wait a
    # while for the rest of it before closing.
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock, data)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    # A 204 has no body and no Content-Length.
    while len(body) < int(headers.get("content-length", "0")):
        body += _recv(sock, head + body)
    return Answer(int(status_line.split()[1]), body)


def _recv(sock: socket.socket, so_far: bytes) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, f"the node closed the connection mid-answer after {so_far[:200]!r}"
    return chunk


class NodeDied(AssertionError):
    """The node process ended while answering a frame (it crashed on that frame)."""


def send(node: NodeProcess, parts: Iterable[bytes], length: int | None, signature: dict[str, str], what: str) -> Answer:
    """Post a peer batch from n2 (see ``post_peer``); a node that dies answering it fails the test
    with ``NodeDied``, naming ``what`` was sent."""
    if not node.alive():
        # Reported apart from NodeDied, so Hypothesis shows the frame that killed the node as it was.
        pytest.fail(f"the node died earlier (exit status {node.process.returncode})")
    headers = {"Content-Type": "application/msgpack", FROM_HEADER: SENDER, **signature}
    try:
        return post_peer(node, parts, headers, length)
    except (OSError, AssertionError):
        try:
            # A crashing process closes its sockets a moment before it is gone.
            node.process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            raise
        raise NodeDied(f"the node died (exit status {node.process.returncode}) on {what}:\n{node.log_tail()}") from None


def send_frame(node: NodeProcess, frame: bytes, signing: Signing) -> Answer:
    what = f"a frame of {len(frame)} bytes starting {frame[:48].hex()}"
    return send(node, [frame], len(frame), signature_headers(frame, signing), what)


def _request(node: NodeProcess, method: str, path: str, body: bytes | None = None) -> Answer:
    address = CONFIG.node(node.node_id)
    connection = http.client.HTTPConnection(address.host, address.port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return Answer(response.status, response.read())
    except OSError:
        assert node.process.poll() is None, f"the node died (exit status {node.process.returncode}) after answering"
        raise
    finally:
        connection.close()


_probe_values = itertools.count()


def assert_still_serving(node: NodeProcess, key: str) -> None:
    assert node.alive(), f"the node died (exit status {node.process.returncode}):\n{node.log_tail()}"
    assert _request(node, "GET", "/health").status == 200
    value = f"probe-{next(_probe_values)}".encode()
    assert _request(node, "PUT", f"/kv/{key}", value).status == 200
    assert _request(node, "GET", f"/kv/{key}") == Answer(200, value)


def assert_answer(node: NodeProcess, answer: Answer, expected: int, key: str) -> None:
    assert answer.status == expected, answer
    assert_still_serving(node, key)


@pytest.fixture(scope="module")
def started() -> list[NodeProcess]:
    return []


@pytest.fixture
def node(node_process: Callable[[ClusterConfig, str], NodeProcess], started: list[NodeProcess]) -> NodeProcess:
    """The running node, started again if an earlier test crashed it: one crash fails one test."""
    if not started or not started[-1].alive():
        started.append(node_process(CONFIG, NODE))
    return started[-1]


@pytest.fixture(scope="module")
def key() -> str:
    """A key the running node owns, so writing it needs no peer."""
    partition_map = PartitionMap.round_robin(CONFIG.node_ids, CONFIG.partitions)
    keys = (f"probe-{i}" for i in range(1000))
    return next(k for k in keys if partition_map.owner(partition_map.partition_for_key(k)) == NODE)


# ---------------------------------------------------------------- valid frames

INT64 = st.integers(0, INT64_MAX)
TEXT = st.text(max_size=16)
BYTES = st.binary(max_size=32)
TTL = st.none() | st.integers(1, 10**9)
PUT = st.builds(PutOp, TEXT, BYTES, TTL)
OPS = st.one_of(
    st.builds(GetOp, TEXT),
    PUT,
    st.builds(DeleteOp, TEXT),
    st.builds(CasOp, TEXT, st.none() | BYTES, st.none() | BYTES, TTL),
    st.builds(BatchGetOp, st.lists(TEXT, max_size=4).map(tuple)),
    st.builds(BatchPutOp, st.lists(PUT, max_size=4).map(tuple)),
    st.builds(ScanPartitionsOp, st.lists(st.integers(0, 8), max_size=4).map(tuple), TEXT, st.none() | TEXT, INT64),
)
RESULTS = st.one_of(
    st.builds(Found, TEXT, BYTES, INT64, st.none() | INT64),
    st.builds(Written, TEXT, INT64),
    st.builds(Deleted, TEXT, st.booleans()),
    st.builds(Failure, TEXT, TEXT),
)
BODIES = st.one_of(
    st.builds(Forward, INT64, INT64, INT64, OPS),
    st.builds(ForwardReply, INT64, INT64, INT64, RESULTS),
    st.builds(ForwardRefused, INT64, INT64, INT64, INT64),
)
MESSAGES = st.builds(Message, st.just(SENDER), st.just(NODE), st.integers(-1, 8) | INT64, BODIES)
# A batch as a sender packs it: an array of encoded messages.
VALID_FRAMES = st.lists(MESSAGES, min_size=1, max_size=4).map(lambda batch: codec.encode(tuple(batch)))


# ---------------------------------------------------------------- hand-built frames


def ext(name: str, *fields: Any) -> msgpack.ExtType:
    """A message as the codec puts it on the wire, whatever its fields hold."""
    return msgpack.ExtType(1, msgpack.packb([name, *fields], use_bin_type=True))


def frame_of(*messages: Any) -> bytes:
    packed: bytes = msgpack.packb(list(messages), use_bin_type=True)
    return packed


def message(body: Any, *, src: Any = SENDER, dst: Any = NODE, partition: Any = 0) -> msgpack.ExtType:
    return ext("Message", src, dst, partition, body)


def forward(op: Any, incarnation: Any = 1, forward_id: Any = 1, target: Any = 0) -> msgpack.ExtType:
    return ext("Forward", incarnation, forward_id, target, op)


def is_str(v: Any) -> bool:
    return type(v) is str


def is_bytes(v: Any) -> bool:
    return type(v) is bytes


def is_int64(v: Any) -> bool:
    return type(v) is int and -(1 << 63) <= v <= INT64_MAX


def is_message(*names: str) -> Callable[[Any], bool]:
    """A message of one of ``names`` (any registered one if none), whatever its fields."""

    def check(v: Any) -> bool:
        if not isinstance(v, msgpack.ExtType) or v.code != 1:
            return False
        name = msgpack.unpackb(v.data)[0]
        return name in names if names else codec.registered(name) is not None

    return check


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def tuple_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (tuple, list)) and all(map(check, v))


OPS_NAMES = ("GetOp", "PutOp", "DeleteOp", "CasOp", "ScanOp", "BatchGetOp", "BatchPutOp", "ScanPartitionsOp")
RESULT_NAMES = ("Found", "Written", "Deleted", "ScanPage", "BatchResults", "Failure")
GET = ext("GetOp", "k")


@dataclass(frozen=True)
class Slot:
    """One field of a frame: which values fit it, the frame with a given value there, and one that fits."""

    fits: Callable[[Any], bool]
    frame: Callable[[Any], bytes]
    good: Any


SLOTS = {
    "Message.dst": Slot(is_str, lambda v: frame_of(message(forward(GET), dst=v)), NODE),
    "Message.partition": Slot(is_int64, lambda v: frame_of(message(forward(GET), partition=v)), 1),
    "Message.body": Slot(is_message(), lambda v: frame_of(message(v)), ext("Written", "k", 1)),
    "Forward.incarnation": Slot(is_int64, lambda v: frame_of(message(forward(GET, incarnation=v))), 5),
    "Forward.forward_id": Slot(is_int64, lambda v: frame_of(message(forward(GET, forward_id=v))), 5),
    "Forward.target_incarnation": Slot(is_int64, lambda v: frame_of(message(forward(GET, target=v))), 5),
    "Forward.op": Slot(is_message(*OPS_NAMES), lambda v: frame_of(message(forward(v))), ext("DeleteOp", "k")),
    "GetOp.key": Slot(is_str, lambda v: frame_of(message(forward(ext("GetOp", v)))), "k"),
    "PutOp.key": Slot(is_str, lambda v: frame_of(message(forward(ext("PutOp", v, b"v", None)))), "k"),
    "PutOp.value": Slot(is_bytes, lambda v: frame_of(message(forward(ext("PutOp", "k", v, None)))), b"v"),
    "PutOp.ttl_ms": Slot(optional(is_int64), lambda v: frame_of(message(forward(ext("PutOp", "k", b"v", v)))), 60),
    "CasOp.expected": Slot(
        optional(is_bytes), lambda v: frame_of(message(forward(ext("CasOp", "k", v, b"n", None)))), b"e"
    ),
    "BatchGetOp.keys": Slot(tuple_of(is_str), lambda v: frame_of(message(forward(ext("BatchGetOp", v)))), ("k",)),
    "BatchPutOp.items": Slot(
        tuple_of(is_message("PutOp")),
        lambda v: frame_of(message(forward(ext("BatchPutOp", v)))),
        (ext("PutOp", "k", b"v", None),),
    ),
    "ScanPartitionsOp.partitions": Slot(
        tuple_of(is_int64), lambda v: frame_of(message(forward(ext("ScanPartitionsOp", v, "", None, 10)))), (0,)
    ),
    "ScanPartitionsOp.limit": Slot(
        is_int64, lambda v: frame_of(message(forward(ext("ScanPartitionsOp", (0,), "", None, v)))), 10
    ),
    "ForwardReply.result": Slot(
        is_message(*RESULT_NAMES), lambda v: frame_of(message(ext("ForwardReply", 1, 1, 1, v))), ext("Written", "k", 1)
    ),
    "Found.version": Slot(
        is_int64, lambda v: frame_of(message(ext("ForwardReply", 1, 1, 1, ext("Found", "k", b"v", v, None)))), 1
    ),
    "Failure.code": Slot(
        is_str, lambda v: frame_of(message(ext("ForwardReply", 1, 1, 1, ext("Failure", v, "m")))), "not_found"
    ),
    "ForwardRefused.owner_incarnation": Slot(
        is_int64, lambda v: frame_of(message(ext("ForwardRefused", 1, 1, 0, v))), 7
    ),
}
# Values of every msgpack type, the edges of int64 among them; each slot takes the ones it does not fit.
ODD_VALUES = [
    None,
    True,
    0,
    -1,
    -(1 << 63),
    INT64_MAX,
    INT64_MAX + 1,
    (1 << 64) - 1,
    1.5,
    "",
    "text",
    b"",
    b"bytes",
    (),
    (1, "a", None),
    ("k",),
    {"k": 1},
    # Registered messages in the wrong place, and unknown ones.
    ext("Found", "k", b"v", 1, None),
    GET,
    ext("NoSuchMessage", 1),
    msgpack.ExtType(7, b"\x00"),
]
MISTYPED = st.sampled_from(sorted(SLOTS)).flatmap(
    lambda slot: st.sampled_from([v for v in ODD_VALUES if not SLOTS[slot].fits(v)]).map(lambda v: (slot, v))
)
# Whole messages of the wrong shape: too few or too many fields, no name, not a message at all.
MISSHAPEN = st.sampled_from(
    [
        frame_of(ext("Message", SENDER, NODE, 0)),
        frame_of(ext("Message", SENDER, NODE, 0, forward(ext("GetOp", "k")), "extra")),
        frame_of(msgpack.ExtType(1, msgpack.packb([]))),
        frame_of(msgpack.ExtType(1, msgpack.packb([7, "x"]))),
        frame_of(msgpack.ExtType(1, b"\xc1")),
        frame_of(message(forward(ext("GetOp")))),
        frame_of(message(forward(ext("GetOp", "k", "", None, 0, "", "", "extra")))),
        frame_of(message(forward(ext("GetOp", "k")), src="n3")),
        frame_of("not a message"),
        msgpack.packb({"not": "a batch"}),
    ]
)


def _ext_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc7" + length.to_bytes(1, "big") + b"\x01"
    if length < 1 << 16:
        return b"\xc8" + length.to_bytes(2, "big") + b"\x01"
    return b"\xc9" + length.to_bytes(4, "big") + b"\x01"


_MESSAGE_HEAD = b"\x95" + msgpack.packb("Message") + msgpack.packb(SENDER) + msgpack.packb(NODE) + msgpack.packb(0)


def nested_messages(depth: int, between: bytes) -> bytes:
    """A frame of one Message whose body is a Message, ``depth`` deep, with ``between`` (array or map
    headers) around each inner one; built outside in with one join, not by repacking every level."""
    innermost = msgpack.packb(None)
    headers = []
    inner_length = len(innermost)
    for _ in range(depth):
        payload_length = len(_MESSAGE_HEAD) + len(between) + inner_length
        headers.append(_ext_header(payload_length))
        inner_length = len(headers[-1]) + payload_length
    return b"\x91" + b"".join(h + _MESSAGE_HEAD + between for h in reversed(headers)) + innermost


def _in_message_body(value: bytes) -> bytes:
    payload = _MESSAGE_HEAD + value
    return b"\x91" + _ext_header(len(payload)) + payload


NESTINGS: dict[str, Callable[[int], bytes]] = {
    "arrays": lambda depth: b"\x91" * depth + b"\xc0",
    "maps": lambda depth: b"\x81\xc0" * depth + b"\xc0",
    "arrays in a message": lambda depth: _in_message_body(b"\x91" * depth + b"\xc0"),
    "maps in a message": lambda depth: _in_message_body(b"\x81\xc0" * depth + b"\xc0"),
    "messages": lambda depth: nested_messages(depth, b""),
    "messages in arrays": lambda depth: nested_messages(depth, b"\x91"),
    "messages in maps": lambda depth: nested_messages(depth, b"\x81\xc0"),
}


# ---------------------------------------------------------------- the properties


@FUZZ
@given(frame=st.binary(max_size=2048), signing=SIGNINGS)
def test_arbitrary_bytes_are_refused_or_are_a_batch(
    node: NodeProcess, key: str, frame: bytes, signing: Signing
) -> None:
    answer = send_frame(node, frame, signing)
    try:
        decoded = codec.decode(frame)
    except codec.CodecError:
        decoded = None
    # Random bytes are rarely a batch of messages from n2 to n1 (an empty array is one).
    is_batch = isinstance(decoded, tuple) and all(
        isinstance(m, Message) and (m.src, m.dst) == (SENDER, NODE) for m in decoded
    )
    assert_answer(node, answer, refusal(signing, 204 if is_batch else 400), key)


@FUZZ
@given(data=st.data(), frame=VALID_FRAMES, signing=SIGNINGS)
def test_a_truncated_frame_is_refused(
    node: NodeProcess, key: str, data: st.DataObject, frame: bytes, signing: Signing
) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    assert_answer(node, send_frame(node, frame[:cut], signing), refusal(signing, 400), key)


@FUZZ
@given(frame=VALID_FRAMES, signing=SIGNINGS)
def test_a_replayed_frame_is_taken_twice_and_harms_nothing(
    node: NodeProcess, key: str, frame: bytes, signing: Signing
) -> None:
    # Replays are the node's business (forwards carry ids), not the transport's: both copies are delivered.
    for _ in range(2):
        assert_answer(node, send_frame(node, frame, signing), refusal(signing, 204), key)


@FUZZ
@given(nesting=st.sampled_from(sorted(NESTINGS)), depth=st.integers(200, 5000), signing=SIGNINGS)
# Before the codec bounded nesting, 200 nested messages crashed the node in msgpack's C extension.
@example(nesting="messages", depth=200, signing=Signing.SIGNED)
def test_a_deeply_nested_frame_is_refused(
    node: NodeProcess, key: str, nesting: str, depth: int, signing: Signing
) -> None:
    frame = NESTINGS[nesting](depth)
    assert_answer(node, send_frame(node, frame, signing), refusal(signing, 400), key)


@FUZZ
@given(slot_value=MISTYPED, signing=SIGNINGS)
def test_a_mistyped_field_is_refused(
    node: NodeProcess, key: str, slot_value: tuple[str, Any], signing: Signing
) -> None:
    slot, value = slot_value
    frame = SLOTS[slot].frame(value)
    assert_answer(node, send_frame(node, frame, signing), refusal(signing, 400), key)


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_each_slot_takes_a_value_that_fits(node: NodeProcess, key: str, slot: str) -> None:
    # The control for test_a_mistyped_field_is_refused: the same frames with a fitting value are taken.
    assert_answer(node, send_frame(node, SLOTS[slot].frame(SLOTS[slot].good), Signing.SIGNED), 204, key)


@settings(FUZZ, max_examples=40)
@given(frame=MISSHAPEN, signing=SIGNINGS)
def test_a_misshapen_message_is_refused(node: NodeProcess, key: str, frame: bytes, signing: Signing) -> None:
    assert_answer(node, send_frame(node, frame, signing), refusal(signing, 400), key)


@settings(FUZZ, max_examples=20)
@given(excess=st.integers(1, 1 << 16), declared=st.booleans(), signing=SIGNINGS)
def test_an_oversized_frame_is_refused(
    node: NodeProcess, key: str, excess: int, declared: bool, signing: Signing
) -> None:
    size = LIMIT_BYTES + excess
    # Signed as if whole; sent with its length declared, or chunked so the node must count as it reads.
    filler = b"\x00" * (1 << 16)
    whole, rest = divmod(size - 1, len(filler))
    signature = signature_headers(b"\x91" + filler * whole + filler[:rest], signing)
    parts = itertools.chain([b"\x91"], itertools.repeat(filler, whole), [filler[:rest]])
    answer = send(node, parts, size if declared else None, signature, f"a frame of {size} bytes")
    assert_answer(node, answer, refusal(signing, 413), key)
