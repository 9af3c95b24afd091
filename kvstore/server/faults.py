"""The fault policy a node process runs under, swappable at runtime.

The peer transport asks it the fate of every outgoing message and the node clock asks it for the
node's clock offset; both read ``FaultSwitch.policy`` on every use, so switching it takes effect at
once (an admin route can install a chaos policy into a running node).
"""

from __future__ import annotations

from kvstore.effects import FaultPolicy, NoFaults


class FaultSwitch:
    def __init__(self, policy: FaultPolicy | None = None) -> None:
        self.policy: FaultPolicy = policy if policy is not None else NoFaults()

    def install(self, policy: FaultPolicy) -> None:
        self.policy = policy

    def clear(self) -> None:
        self.policy = NoFaults()
