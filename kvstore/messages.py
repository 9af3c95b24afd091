"""Client operations, results and node-level messages: frozen dataclasses registered with the codec.

Inputs to ``Node.step`` are ``ClientRequest``, ``Message`` (from a peer), ``TimerFired``, ``Started``,
``SendFailed`` and ``Synced``. Every peer ``Message`` carries a partition id so the node can hand it to the
per-partition protocol instance; node-level traffic that spans partitions uses ``NODE_PARTITION``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.codec import register, register_all
from kvstore.errors import ErrorCode
from replication.replica import LogEntry
from replication.vclock import VectorClock

# Protocol packages may not import kvstore, so the classes their messages carry are registered here, in
# the module every node, driver and codec user imports: a log entry (carried by log replication) and a
# vector clock (the causal context of leaderless writes).
register_all((LogEntry, VectorClock))

# Partition id used by messages that belong to the node as a whole rather than one partition.
NODE_PARTITION = -1


# ---------------------------------------------------------------- client operations


@register
@dataclass(frozen=True)
class GetOp:
    key: str


@register
@dataclass(frozen=True)
class PutOp:
    key: str
    value: bytes
    ttl_ms: int | None = None


@register
@dataclass(frozen=True)
class DeleteOp:
    key: str


@register
@dataclass(frozen=True)
class CasOp:
    """Set ``key`` to ``new`` only if its current value is ``expected``.

    ``expected=None`` means "the key must not exist"; ``new=None`` deletes the key.
    """

    key: str
    expected: bytes | None
    new: bytes | None
    ttl_ms: int | None = None


@register
@dataclass(frozen=True)
class ScanOp:
    """Keys in ``[start, end)`` in key order (``end=None``: no upper bound), at most ``limit``."""

    start: str
    end: str | None
    limit: int


@register
@dataclass(frozen=True)
class BatchGetOp:
    keys: tuple[str, ...]


@register
@dataclass(frozen=True)
class BatchPutOp:
    items: tuple[PutOp, ...]


KeyOp = GetOp | PutOp | DeleteOp | CasOp
ClientOp = GetOp | PutOp | DeleteOp | CasOp | ScanOp | BatchGetOp | BatchPutOp


# ---------------------------------------------------------------- results


@register
@dataclass(frozen=True)
class Found:
    key: str
    value: bytes
    version: int
    expires_at_ms: int | None = None


@register
@dataclass(frozen=True)
class Written:
    key: str
    version: int


@register
@dataclass(frozen=True)
class Deleted:
    key: str
    existed: bool


@register
@dataclass(frozen=True)
class ScanItem:
    key: str
    value: bytes
    version: int


@register
@dataclass(frozen=True)
class ScanPage:
    items: tuple[ScanItem, ...]
    # True when more keys in the range exist beyond the returned ``limit``.
    truncated: bool


@register
@dataclass(frozen=True)
class Failure:
    code: str
    message: str

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode(self.code)

    @staticmethod
    def of(code: ErrorCode, message: str) -> Failure:
        return Failure(code.value, message)


@register
@dataclass(frozen=True)
class BatchResults:
    results: tuple[Found | Written | Deleted | Failure, ...]


Result = Found | Written | Deleted | ScanPage | BatchResults | Failure


# ---------------------------------------------------------------- node-level messages


@register
@dataclass(frozen=True)
class ScanPartitionsOp:
    """A scan restricted to partitions the receiving node owns (the fan-out half of ``ScanOp``)."""

    partitions: tuple[int, ...]
    start: str
    end: str | None
    limit: int


@register
@dataclass(frozen=True)
class Forward:
    """Ask the owner of ``op``'s partition(s) to execute it; answered by ``ForwardReply`` or ``ForwardRefused``.

    ``forward_id`` is unique within the sender's ``incarnation`` (drawn at each start), so the owner can
    recognise a duplicated forward. ``target_incarnation`` is the owner's incarnation as the sender knows
    it (0: not known yet): an owner executes only forwards addressed to its current life, so a duplicate
    sent before the owner restarted can never be executed a second time by the new life.
    """

    incarnation: int
    forward_id: int
    target_incarnation: int
    op: ClientOp | ScanPartitionsOp


@register
@dataclass(frozen=True)
class ForwardReply:
    """The result of a forward; ``incarnation`` echoes the sender's, ``owner_incarnation`` is the replier's."""

    incarnation: int
    forward_id: int
    owner_incarnation: int
    result: Result


@register
@dataclass(frozen=True)
class ForwardRefused:
    """The forward was addressed to another life of the owner and was not executed by this one.

    ``target_incarnation`` echoes the refused copy's, so the sender can tell a refusal of the copy it is
    waiting on from a late refusal of an earlier copy (a duplicate of the first-contact forward).
    """

    incarnation: int
    forward_id: int
    target_incarnation: int
    owner_incarnation: int


# ---------------------------------------------------------------- inputs to Node.step


@register
@dataclass(frozen=True)
class Message:
    """A peer message. ``partition`` routes it to the per-partition protocol instance."""

    src: str
    dst: str
    partition: int
    body: object


@dataclass(frozen=True)
class ClientRequest:
    request_id: int
    op: ClientOp


@dataclass(frozen=True)
class TimerFired:
    key: str


@dataclass(frozen=True)
class Started:
    """Delivered once after boot or restart, before any other input."""


@dataclass(frozen=True)
class Synced:
    """Storage is synced up to ``lsn`` now (delivered by the driver after every sync it completes)."""

    lsn: int


@dataclass(frozen=True)
class SendFailed:
    """The transport could not deliver ``msg`` at all (for example, connection refused)."""

    msg: Message


Input = ClientRequest | Message | TimerFired | Started | SendFailed | Synced
