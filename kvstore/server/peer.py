"""Peer transport: node messages as msgpack batches over keep-alive HTTP, authenticated with HMAC.

Sending: ``send`` asks the fault policy the message's fate (deliver after some delay, drop, or several
copies), then appends it to the destination's bounded queue. At the end of the loop turn everything queued
for a peer (up to ``PEER_BATCH_BYTES`` a request) is written as one ``POST /peer`` on the one keep-alive
connection to that peer (``peer_link.PeerLink``), without waiting for the answers to earlier requests
(pipelined, ``MAX_PIPELINED`` deep); what the link cannot take yet stays queued until an answer comes back.
A request is written once and never resent.

Messages queued for a peer that cannot even be connected (refused, connect timeout) were certainly not
delivered: each is reported back as ``SendFailed``. A request whose connection ends before its answer may
or may not have delivered it, so it is dropped and the node's own timeouts cover it.

A message to this node itself never touches the network, but is treated as the simulator treats it: the
fault policy decides its copies and delays, and each copy crosses the codec (encoded when sent, decoded
when delivered) before it reaches the pump, never inside the step that sent it.

Receiving: ``PeerInbox.handle`` checks ``X-Kv-From`` names another member and ``X-Kv-Signature`` is
the HMAC-SHA256 of the body under the cluster secret, then hands each message to the pump. A bad or
missing signature is a 401 and nothing is delivered. A compressed batch is signed as sent and inflated
(bounded) only once its signature holds; a batch that does not decode is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
from multidict import CIMultiDict

from kvstore import codec
from kvstore.config import ClusterConfig, NodeAddress
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import Message, RaftBatch
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.http_codec import (
    MSGPACK_TYPE,
    inflate,
    is_msgpack_body,
    read_wire_body,
    structured_body_limit_bytes,
    wire_limit_bytes,
)
from kvstore.server.http_message import Request, Response
from kvstore.server.peer_link import PeerLink, request_head
from kvstore.server.router import Router
from partitioning.partition_map import MAX_MEMBERS

log = logging.getLogger(__name__)

FROM_HEADER = "X-Kv-From"
SIGNATURE_HEADER = "X-Kv-Signature"
PEER_PATH = "/peer"
# A sender stops adding messages to a batch once it is this large (one message always goes).
PEER_BATCH_BYTES = 1 << 20
# Peers a node keeps a sender for (a roster holds at most this many nodes).
MAX_PEERS = MAX_MEMBERS


def sign(secret: str, body: bytes) -> str:
    return sign_bytes(secret.encode(), body)


def sign_bytes(secret: bytes, body: bytes) -> str:
    # Not hmac.digest: that one-shot call gives up the interpreter lock whatever the size, and a busy sync
    # thread then holds the loop up to a switch interval (5 ms) per batch. An HMAC object keeps the lock for
    # small bodies (a peer batch is 500 bytes at p50 under load).
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def peer_body_limit_bytes(max_value_bytes: int) -> int:
    """Largest peer batch accepted: a full batch plus one message as large as a client body."""
    return PEER_BATCH_BYTES + 2 * structured_body_limit_bytes(max_value_bytes)


class PeerHealth:
    """What this node knows of a peer from its own sends: unknown until the first one."""

    def __init__(self) -> None:
        self.state = "unknown"
        self.last_error: str | None = None

    def ok(self) -> None:
        self.state, self.last_error = "up", None

    def failed(self, error: str) -> None:
        self.state, self.last_error = "down", error


@dataclass
class _Delivery:
    """The copies the fault policy made of one message. ``SendFailed`` means no copy can have arrived,
    so it is reported only when every copy certainly failed (a duplicate may have been delivered)."""

    msg: Message
    copies: int
    maybe_delivered: bool = False

    def settle(self, delivered: bool, report: Callable[[Message], None]) -> None:
        self.copies -= 1
        self.maybe_delivered = self.maybe_delivered or delivered
        if self.copies == 0 and not self.maybe_delivered:
            report(self.msg)


class _Peer:
    def __init__(self, address: NodeAddress) -> None:
        self.address = address
        self.queue: deque[_Delivery] = deque()
        self.health = PeerHealth()
        # Copies waiting out a fault delay, bounded like the queue.
        self.delayed = 0
        # The connection, once one is made; a task making one.
        self.link: PeerLink[list[_Delivery]] | None = None
        self.connecting: asyncio.Task[None] | None = None
        # A flush is scheduled for the end of this loop turn.
        self.flush_due = False

    @property
    def host(self) -> str:
        return self.address.host.strip("[]")


class PeerTransport:
    def __init__(
        self,
        node_id: str,
        config: ClusterConfig,
        faults: FaultSwitch,
        on_send_failed: Callable[[Message], None],
        *,
        deliver_local: Callable[[Message], None],
        address_of: Callable[[str], str],
    ) -> None:
        self._node_id = node_id
        # Where a node listens (the node's roster, else its config): peers are found as messages name them, so
        # a node that joins at run time is reached like any other.
        self._address_of = address_of
        self._secret = config.secret.encode()
        self._faults = faults
        self._on_send_failed = on_send_failed
        self._deliver_local = deliver_local
        # Copies of messages to this node waiting for their delivery, bounded like a peer's queue.
        self._local_pending = 0
        self._max_queue = config.limits.max_peer_queue
        self._answer_timeout_s = config.timeouts.request_timeout_ms / 1000
        self._connect_timeout_s = config.timeouts.peer_connect_timeout_ms / 1000
        self._peers: dict[str, _Peer] = {}
        self._loop = asyncio.get_running_loop()
        self._started = False
        # Messages handed to the transport for another node, by kind (the body's class), before any fault
        # policy: what the protocols cost in messages (/metrics). Kinds are this code's classes: bounded.
        self.sent_by_kind: dict[str, int] = {}
        # POST /peer requests made: one carries every message queued for a peer when it goes.
        self.batches_sent = 0
        # Leader mode: the Raft messages the RaftBatch envelopes among them carried, by kind.
        self.raft_items_by_kind: dict[str, int] = {}

    async def start(self) -> None:
        self._started = True
        for peer in self._peers.values():
            self._flush(peer)

    def _peer(self, node_id: str) -> _Peer | None:
        """The sender for ``node_id``, made the first time a message names it, and pointed at a new address
        if the roster moved it; None if nothing says where it listens."""
        text = self._address_of(node_id)
        peer = self._peers.get(node_id)
        if peer is not None and (not text or text == f"{peer.address.host}:{peer.address.port}"):
            return peer
        if not text:
            return None
        try:
            address = NodeAddress.parse(node_id, text)
        except ValueError:
            return None
        if peer is not None:
            peer.address = address
            # What is written on the old address's connection settles as that connection ends.
            if peer.link is not None:
                peer.link.close()
                peer.link = None
            return peer
        if len(self._peers) >= MAX_PEERS:
            return None
        peer = self._peers[node_id] = _Peer(address)
        return peer

    async def close(self) -> None:
        self._started = False
        for peer in self._peers.values():
            if peer.connecting is not None:
                peer.connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await peer.connecting
            if peer.link is not None:
                peer.link.close()

    def health(self) -> dict[str, PeerHealth]:
        return {node_id: peer.health for node_id, peer in self._peers.items()}

    def queue_depths(self) -> dict[str, int]:
        return {node_id: len(peer.queue) for node_id, peer in self._peers.items()}

    # ------------------------------------------------------------ sending

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for its destination; called from the pump, so it never steps the node itself."""
        if msg.dst == self._node_id:
            self._send_local(msg)
            return
        kind = type(msg.body).__name__
        self.sent_by_kind[kind] = self.sent_by_kind.get(kind, 0) + 1
        if isinstance(msg.body, RaftBatch):
            carried = self.raft_items_by_kind
            for _, item in msg.body.items:
                item_kind = type(item).__name__
                carried[item_kind] = carried.get(item_kind, 0) + 1
        peer = self._peer(msg.dst)
        if peer is None:
            # Nowhere to send it: certainly not delivered (reported on a later loop turn, not inside the step).
            log.warning("node %s knows no address of %r; a message to it is dropped", self._node_id, msg.dst)
            self._loop.call_soon(self._on_send_failed, msg)
            return
        delays = self._faults.policy.on_send(NodeClock.true_now_ms(), msg)
        delivery = _Delivery(msg, len(delays))
        for delay_ms in delays:
            if delay_ms <= 0:
                self._enqueue(peer, delivery)
            elif peer.delayed < self._max_queue:
                peer.delayed += 1
                self._loop.call_later(delay_ms / 1000, self._enqueue_delayed, peer, delivery)
            else:
                # Too many copies in the air: the network loses this one, silently, as a network would.
                delivery.settle(True, self._on_send_failed)

    def _send_local(self, msg: Message) -> None:
        try:
            wire = codec.encode(msg)
        except (TypeError, ValueError):
            log.exception("cannot encode a message to this node; dropped")
            return
        delays = self._faults.policy.on_send(NodeClock.true_now_ms(), msg)
        delivery = _Delivery(msg, len(delays))
        for delay_ms in delays:
            if self._local_pending >= self._max_queue:
                # Certainly not delivered; reported on a later loop turn, not inside the current step.
                self._loop.call_soon(delivery.settle, False, self._on_send_failed)
                continue
            self._local_pending += 1
            self._loop.call_later(max(0, delay_ms) / 1000, self._arrive_local, delivery, wire)

    def _arrive_local(self, delivery: _Delivery, wire: bytes) -> None:
        self._local_pending -= 1
        try:
            msg = codec.decode(wire)
        except codec.CodecError:
            log.exception("a message to this node did not survive the codec; dropped")
            delivery.settle(False, self._on_send_failed)
            return
        delivery.settle(True, self._on_send_failed)
        self._deliver_local(msg)

    def _enqueue_delayed(self, peer: _Peer, delivery: _Delivery) -> None:
        peer.delayed -= 1
        self._enqueue(peer, delivery)

    def _enqueue(self, peer: _Peer, delivery: _Delivery) -> None:
        if len(peer.queue) >= self._max_queue:
            # Certainly not delivered; reported on a later loop turn, not inside the current step.
            self._loop.call_soon(delivery.settle, False, self._on_send_failed)
            return
        peer.queue.append(delivery)
        if not peer.flush_due:
            # At the end of this loop turn, so that every message the turn's steps queue shares one request.
            peer.flush_due = True
            self._loop.call_soon(self._flush, peer)

    def _flush(self, peer: _Peer) -> None:
        """Write what is queued for ``peer`` as requests while its link takes them; connect first if need be."""
        peer.flush_due = False
        if not self._started:
            return
        link = peer.link
        if link is None or link.closed:
            peer.link = None
            if peer.queue and peer.connecting is None:
                peer.connecting = self._loop.create_task(self._connect(peer), name=f"peer-{peer.address.node_id}")
            return
        while peer.queue and link.ready:
            batch, body = self._take_batch(peer)
            if batch:
                self._post(peer, link, batch, body)

    async def _connect(self, peer: _Peer) -> None:
        address = peer.address
        try:
            _, link = await asyncio.wait_for(
                self._loop.create_connection(lambda: self._new_link(peer), peer.host, address.port),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            # Certainly not delivered: every message queued for the peer is reported, as a refused POST was.
            peer.connecting = None
            peer.health.failed(f"cannot connect: {exc!r}")
            queued, peer.queue = list(peer.queue), deque()
            for delivery in queued:
                delivery.settle(False, self._on_send_failed)
            return
        peer.connecting = None
        if peer.address is not address or not self._started:
            link.close()
        else:
            peer.link = link
        self._flush(peer)

    def _new_link(self, peer: _Peer) -> PeerLink[list[_Delivery]]:
        def answered(batch: list[_Delivery], status: int) -> None:
            self._answered(peer, batch, status)

        def closed(batches: list[list[_Delivery]]) -> None:
            if batches:
                peer.health.failed("the connection ended before the peer answered")
            # Each request may have reached the peer: its messages may have been delivered.
            for batch in batches:
                for delivery in batch:
                    delivery.settle(True, self._on_send_failed)
            if peer.queue and not peer.flush_due:
                peer.flush_due = True
                self._loop.call_soon(self._flush, peer)

        return PeerLink(answered, closed, lambda: self._flush(peer), self._answer_timeout_s)

    def _take_batch(self, peer: _Peer) -> tuple[list[_Delivery], bytes]:
        batch: list[_Delivery] = []
        parts: list[bytes] = []
        size = 0
        while peer.queue and size < PEER_BATCH_BYTES:
            delivery = peer.queue.popleft()
            try:
                part = codec.encode(delivery.msg)
            except (TypeError, ValueError):
                log.exception("cannot encode a message for %s; dropped", delivery.msg.dst)
                continue
            batch.append(delivery)
            parts.append(part)
            size += len(part)
        header = msgpack.Packer().pack_array_header(len(parts))
        return batch, header + b"".join(parts)

    def _post(self, peer: _Peer, link: PeerLink[list[_Delivery]], batch: list[_Delivery], body: bytes) -> None:
        headers = {
            "Content-Type": MSGPACK_TYPE,
            FROM_HEADER: self._node_id,
            SIGNATURE_HEADER: sign_bytes(self._secret, body),
        }
        address = peer.address
        head = request_head(f"{address.host}:{address.port}", PEER_PATH, headers, len(body))
        self.batches_sent += 1
        link.post(head, body, batch)

    def _answered(self, peer: _Peer, batch: list[_Delivery], status: int) -> None:
        # The inbox refuses a batch (4xx) before delivering any of it, and the HTTP edge answers 503
        # only to a request it did not pass on; any other answer may follow a delivery.
        delivered = not (400 <= status < 500 or status == 503)
        for delivery in batch:
            delivery.settle(delivered, self._on_send_failed)
        if 200 <= status < 300:
            peer.health.ok()
        else:
            peer.health.failed(f"peer answered HTTP {status}")
            log.warning("node %s refused a batch from %s with HTTP %d", peer.address.node_id, self._node_id, status)


class PeerInbox:
    """The receiving side: ``POST /peer``."""

    def __init__(
        self,
        node_id: str,
        config: ClusterConfig,
        deliver: Callable[[Message], None],
        is_peer: Callable[[str], bool],
    ) -> None:
        self._node_id = node_id
        self._secret = config.secret
        # Whether a sender is another node of the cluster: its roster (which grows as nodes join) or its config.
        self._is_peer = is_peer
        self._deliver = deliver
        self._limit_bytes = peer_body_limit_bytes(config.limits.max_value_bytes)

    def register(self, router: Router) -> None:
        router.add(
            "POST",
            PEER_PATH,
            self.handle,
            internal=True,
            max_body_bytes=wire_limit_bytes(self._limit_bytes),
            check_head=self._check_head,
        )

    def _check_head(self, headers: CIMultiDict[str]) -> None:
        """A sender that is a member, a signature and a msgpack body, checked before the body is read."""
        sender = headers.get(FROM_HEADER)
        if sender is None or sender == self._node_id or not self._is_peer(sender):
            raise KvError(ErrorCode.UNAUTHORIZED, f"{FROM_HEADER} must name another member of the cluster")
        if SIGNATURE_HEADER not in headers:
            raise KvError(ErrorCode.UNAUTHORIZED, f"missing {SIGNATURE_HEADER}")
        if not is_msgpack_body(headers):
            raise KvError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"peer batches are {MSGPACK_TYPE}")

    async def handle(self, request: Request, _: str) -> Response:
        self._check_head(request.headers)
        sender = request.headers[FROM_HEADER]
        signature = request.headers[SIGNATURE_HEADER]
        wire, coding = read_wire_body(request, self._limit_bytes)
        if not hmac.compare_digest(sign(self._secret, wire).encode(), signature.encode("utf-8", "replace")):
            raise KvError(ErrorCode.UNAUTHORIZED, "bad signature")
        # Inflated only once signed, so no one outside the cluster can make this node do that work.
        body = inflate(wire, coding, self._limit_bytes)
        try:
            batch = codec.decode(body)
        except codec.CodecError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"undecodable peer batch: {exc}") from exc
        if not isinstance(batch, tuple) or not all(
            isinstance(m, Message) and m.src == sender and m.dst == self._node_id for m in batch
        ):
            raise KvError(ErrorCode.BAD_REQUEST, f"a peer batch is a list of messages from {sender} to {self._node_id}")
        for msg in batch:
            self._deliver(msg)
        return Response(status=204)
