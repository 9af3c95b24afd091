"""Client timeouts in the simulator runner: each client keeps one timeout check on the heap, which moves
on to the deadline of the op then running, so an op still times out exactly ``client_timeout_ms`` after
it was invoked however many ops the client finished before it."""

from __future__ import annotations

from chaos.history import Op
from chaos.nemesis import NemesisConfig
from chaos.run_sim import run_in_sim
from chaos.scenario import CheckerSpec, ClusterSpec, Scenario, WorkloadSpec
from kvstore.faults import Delay

CLIENT_TIMEOUT_MS = 100


def scenario(seed: int) -> Scenario:
    # Forwarded ops take 2 x 200 ms under the delay fault, ops on the client's own node a few ms: the
    # former time out on the client, the latter finish in between.
    return Scenario(
        name="client-timeouts",
        duration_ms=3000,
        quiet_ms=500,
        seed=seed,
        cluster=ClusterSpec(nodes=3, request_timeout_ms=2000),
        workload=WorkloadSpec(kind="register", concurrency=4, think_ms=5, client_timeout_ms=CLIENT_TIMEOUT_MS,
                              options={"keys": 6}),
        nemesis=NemesisConfig(faults=("delay",), interval_ms=1000, start_after_ms=500, delay=Delay("fixed", 200)),
        checkers=CheckerSpec(names=("linearizable", "lost-writes")),
    )


def took_ms(op: Op) -> int:
    assert op.complete is not None and op.complete.time is not None and op.invoke.time is not None
    return op.complete.time - op.invoke.time


def test_ops_time_out_at_their_own_deadline_between_ops_that_finish() -> None:
    for seed in (1, 2):
        result = run_in_sim(scenario(seed))
        ops = result.history.ops()
        timed_out = [op for op in ops if op.error == "client_timeout"]
        assert timed_out, f"seed={seed}: no op timed out"
        assert all(op.type == "info" and took_ms(op) == CLIENT_TIMEOUT_MS for op in timed_out), seed
        finished = [op for op in ops if op.complete is not None and op.error != "client_timeout"]
        assert all(took_ms(op) <= CLIENT_TIMEOUT_MS for op in finished), seed
        # The timeouts are not only each client's first op: the check moved on past finished ops.
        by_process: dict[int, int] = {}
        for op in ops:
            by_process[op.process] = by_process.get(op.process, 0) + 1
        assert any(by_process[op.process] > 1 for op in timed_out), seed
        # A timed-out op is info and its process moves on: no process invokes again after an info op.
        assert len({op.process for op in timed_out}) == len(timed_out)
        assert result.valid is True, (seed, {k: v.get("valid") for k, v in result.checkers.items()})
