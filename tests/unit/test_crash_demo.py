"""The crash half of `kvstore demo` records its ops as a history that the chaos checkers judge."""

from __future__ import annotations

import asyncio
import io
from typing import Any, cast

from chaos.checkers import linearizable, lost_writes
from chaos.crash_demo import DemoContext, DemoSettings
from chaos.workloads import PlannedOp
from kvstore.client import AsyncClient
from kvstore.cluster import LocalCluster
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import Found, Written


class FakeClient:
    """A store that can be told to fail the next request, or to forget a key (a lost write)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.fail_next: ErrorCode | None = None

    def _maybe_fail(self) -> None:
        code, self.fail_next = self.fail_next, None
        if code is not None:
            raise KvError(code, "injected")

    async def get(self, key: str) -> Found | None:
        self._maybe_fail()
        return Found(key, self.data[key], 1) if key in self.data else None

    async def put(self, key: str, value: bytes) -> Written:
        self._maybe_fail()
        self.data[key] = value
        return Written(key, 1)


def context() -> tuple[DemoContext, FakeClient]:
    fake = FakeClient()
    ctx = DemoContext(DemoSettings(), cast(LocalCluster, None), cast(AsyncClient, fake), io.StringIO())
    return ctx, fake


def run(ctx: DemoContext, fake: FakeClient, *ops: tuple[int, str, Any]) -> list[KvError | None]:
    async def go() -> list[KvError | None]:
        return [await ctx.record(p, PlannedOp(f, "k", v), cast(AsyncClient, fake)) for p, f, v in ops]

    return asyncio.run(go())


def test_outcomes_follow_the_error_codes() -> None:
    ctx, fake = context()
    run(ctx, fake, (0, "write", "a"))
    fake.fail_next = ErrorCode.UNAVAILABLE
    run(ctx, fake, (0, "write", "b"))
    fake.fail_next = ErrorCode.TIMEOUT
    errors = run(ctx, fake, (0, "write", "c"))
    run(ctx, fake, (1, "read", None))
    ops = ctx.recorder.history("t").ops()
    assert [(op.f, op.type, op.value) for op in ops] == [
        ("write", "ok", "a"), ("write", "fail", "b"), ("write", "info", "c"), ("read", "ok", "a")]
    assert errors[0] is not None and errors[0].code is ErrorCode.TIMEOUT
    assert lost_writes.check(ctx.recorder.history("t")).valid is True
    assert linearizable.check(ctx.recorder.history("t")).valid is True


def test_a_lost_write_is_caught() -> None:
    ctx, fake = context()
    run(ctx, fake, (0, "write", "a"), (0, "write", "b"))
    fake.data["k"] = b"a"  # the store forgot the second write
    run(ctx, fake, (1, "read", None))
    result = lost_writes.check(ctx.recorder.history("t"))
    assert [lost.write.invoke.value for lost in result.lost] == ["b"]
    assert linearizable.check(ctx.recorder.history("t")).valid is False


def test_a_value_from_a_failed_write_is_caught() -> None:
    ctx, fake = context()
    run(ctx, fake, (0, "write", "a"))
    fake.fail_next = ErrorCode.UNAVAILABLE
    run(ctx, fake, (0, "write", "b"))
    fake.data["k"] = b"b"  # the write said it did not happen, yet it shows
    run(ctx, fake, (1, "read", None))
    assert linearizable.check(ctx.recorder.history("t")).valid is False
