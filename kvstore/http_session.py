"""The one way kvstore opens an aiohttp client session: every request is sent at most once.

aiohttp resends a PUT or DELETE by itself when a reused keep-alive connection turns out to be closed
(RFC 9112 allows it for idempotent methods). For a database that resend is wrong twice over: the
first copy may already have been applied, so the resend can apply the write again after a later one;
and when the resend cannot connect, the error aiohttp raises says "never connected", which a caller
reads as "certainly not applied", a definite failure for a write that happened.
"""

from __future__ import annotations

from typing import Any

import aiohttp


def send_once_session(**kwargs: Any) -> aiohttp.ClientSession:
    """``aiohttp.ClientSession(**kwargs)`` without the automatic resend."""
    session = aiohttp.ClientSession(**kwargs)
    # No public switch exists; aiohttp's own test client turns the resend off through this attribute,
    # which exists from aiohttp 3.11 (hence the lower bound: 3.10 resends with no way to stop it), and
    # tests/unit/test_client.py fails if a future aiohttp resends again.
    session._retry_connection = False
    return session
