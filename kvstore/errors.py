"""Error codes shared by the node, the HTTP API, the client and the checkers.

Every code is either *definite* (the operation certainly did not take effect) or *indefinite* (it may
have). Checkers depend on this split: a definite error becomes a Jepsen ``fail``, an indefinite one an
``info`` that stays open to the end of the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class ErrorSpec:
    http_status: int
    definite: bool


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    BAD_KEY = "bad_key"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PRECONDITION_FAILED = "precondition_failed"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHORIZED = "unauthorized"
    REQUEST_TIMEOUT = "request_timeout"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    UNSUPPORTED = "unsupported"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    NOT_LEADER = "not_leader"
    WRONG_EPOCH = "wrong_epoch"
    TIMEOUT = "timeout"
    INTERNAL = "internal"

    @property
    def spec(self) -> ErrorSpec:
        return ERROR_SPECS[self]

    @property
    def http_status(self) -> int:
        return ERROR_SPECS[self].http_status

    @property
    def definite(self) -> bool:
        return ERROR_SPECS[self].definite


ERROR_SPECS: dict[ErrorCode, ErrorSpec] = {
    ErrorCode.BAD_REQUEST: ErrorSpec(400, True),
    ErrorCode.BAD_KEY: ErrorSpec(400, True),
    ErrorCode.NOT_FOUND: ErrorSpec(404, True),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorSpec(405, True),
    ErrorCode.PRECONDITION_FAILED: ErrorSpec(409, True),
    ErrorCode.TOO_LARGE: ErrorSpec(413, True),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorSpec(415, True),
    ErrorCode.UNAUTHORIZED: ErrorSpec(401, True),
    # The HTTP edge refused a request head: too slow, request line too long, headers too large or too many.
    ErrorCode.REQUEST_TIMEOUT: ErrorSpec(408, True),
    ErrorCode.URI_TOO_LONG: ErrorSpec(414, True),
    ErrorCode.HEADERS_TOO_LARGE: ErrorSpec(431, True),
    # A mode that does not offer a requested guarantee refuses the request outright.
    ErrorCode.UNSUPPORTED: ErrorSpec(501, True),
    # The node refused the request before doing anything (its queue or in-flight table is full).
    ErrorCode.OVERLOADED: ErrorSpec(503, True),
    # The owner could not be reached: the request was never delivered to it.
    ErrorCode.UNAVAILABLE: ErrorSpec(503, True),
    # The partition's replica here cannot order the op (it is not the leader) and the op was not passed on
    # to one that can: it was not applied. Retry, later or at the leader.
    ErrorCode.NOT_LEADER: ErrorSpec(503, True),
    # The op was routed with another epoch of the partition map than the replica's: it was not applied.
    # 503, not 409: like not_leader it asks for a retry (once the sender's map is current), and clients
    # and the CLI treat 5xx as "try again", 4xx as "the request is wrong".
    ErrorCode.WRONG_EPOCH: ErrorSpec(503, True),
    # The request was sent but no answer came in time: it may or may not have been applied.
    ErrorCode.TIMEOUT: ErrorSpec(504, False),
    ErrorCode.INTERNAL: ErrorSpec(500, False),
}


class KvError(Exception):
    """An error with a code; raised by validation and by the client library."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    @property
    def definite(self) -> bool:
        return self.code.definite

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code.value, "message": self.message, "definite": self.definite}}


# The most characters of a client's input an error message quotes: a request is never echoed at length.
MAX_SHOWN_CHARS = 100


def shown(text: str) -> str:
    """``text`` quoted for an error message, cut to ``MAX_SHOWN_CHARS`` characters and its length named."""
    if len(text) <= MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:MAX_SHOWN_CHARS]!r}... ({len(text)} characters)"
