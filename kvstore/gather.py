"""Gather: a scan or a batch split into one part per owner, and the parts' answers joined into one result.

A scan asks every owner for its partitions' pages and merges them in key order; a batch sends each owner
the entries of its keys and puts each answer back in its entry's place. The node runs the parts (locally
or forwarded) and hands each part's answer to ``GatherPart.add``; the last one yields the joined result
for ``Gather.target``. A gather does not care whom it answers: the target is whatever the node gives it.
The joined result must wait for a sync (is durable) if any part's answer had to.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    Deleted,
    Failure,
    Found,
    FoundSiblings,
    GetOp,
    KeyOp,
    Result,
    ScanItem,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    Stored,
    Written,
)

T = TypeVar("T")


@dataclass
class Gather(Generic[T]):
    target: T
    remaining: int
    # A batch gathers one result per entry; a scan gathers pages and merges them.
    slots: list[Found | Written | Deleted | FoundSiblings | Stored | Failure | None]
    pages: list[ScanPage]
    scan_limit: int | None
    failure: Failure | None = None
    durable: bool = False


@dataclass
class GatherPart(Generic[T]):
    gather: Gather[T]
    # Positions in the gathered result this part fills (batch) or () for a scan part.
    indices: tuple[int, ...]

    def add(self, result: Result, durable: bool = False) -> Result | None:
        """Take this part's answer (``durable``: it may leave only once synced); the gathered result once it
        was the last part, else None."""
        gather = self.gather
        gather.durable = gather.durable or durable
        if gather.scan_limit is not None:
            if isinstance(result, ScanPage):
                gather.pages.append(result)
            elif isinstance(result, Failure) and gather.failure is None:
                gather.failure = result
        elif isinstance(result, BatchResults):
            for index, entry in zip(self.indices, result.results, strict=True):
                gather.slots[index] = entry
        elif isinstance(result, (Found, Written, Deleted, FoundSiblings, Stored, Failure)):
            for index in self.indices:
                gather.slots[index] = result
        gather.remaining -= 1
        if gather.remaining > 0:
            return None
        if gather.scan_limit is not None:
            return gather.failure or merge_pages(gather.pages, gather.scan_limit)
        assert all(slot is not None for slot in gather.slots), "batch gathered with an empty slot"
        return BatchResults(tuple(s for s in gather.slots if s is not None))


def scan_parts(
    op: ScanOp,
    by_owner: dict[str, list[int]],
    target: T,
    epoch_of: Callable[[int], int] | None = None,
    split: str | None = None,
) -> list[tuple[str, ScanPartitionsOp, GatherPart[T]]]:
    """One part per owner of ``by_owner`` (its partitions), in its order, gathered for ``target``; with
    ``epoch_of`` (range mode), each part names its partitions' epochs. The partitions of owner ``split`` get
    one part each (leader mode: each local replica answers its partition's scan on its own, later)."""
    pieces: list[tuple[str, list[int]]] = []
    for owner, partitions in by_owner.items():
        if owner == split:
            pieces.extend((owner, [p]) for p in partitions)
        else:
            pieces.append((owner, partitions))
    gather = Gather(target, remaining=len(pieces), slots=[], pages=[], scan_limit=op.limit)
    parts = []
    for owner, partitions in pieces:
        epochs = () if epoch_of is None else tuple(epoch_of(p) for p in partitions)
        part = ScanPartitionsOp(tuple(partitions), op.start, op.end, op.limit, epochs)
        parts.append((owner, part, GatherPart(gather, ())))
    return parts


def partition_scan_parts(partitions: tuple[int, ...], limit: int, target: T) -> list[tuple[int, GatherPart[T]]]:
    """One part per partition of a partition scan, gathered for ``target`` (leader mode: each replica
    answers its own partition's scan, later)."""
    gather = Gather(target, remaining=len(partitions), slots=[], pages=[], scan_limit=limit)
    return [(p, GatherPart(gather, ())) for p in partitions]


def batch_parts(
    op: BatchGetOp | BatchPutOp, owner_of: Callable[[str], str], here: str, target: T
) -> tuple[list[tuple[str, BatchGetOp | BatchPutOp, GatherPart[T]]], list[tuple[KeyOp, GatherPart[T]]]]:
    """The parts of a batch gathered for ``target``: one sub-batch per remote owner (in owner order),
    then one key op per entry owned ``here``."""
    key_ops: list[KeyOp] = [GetOp(k) for k in op.keys] if isinstance(op, BatchGetOp) else list(op.items)
    remote: dict[str, list[int]] = {}
    local: list[int] = []
    for index, key_op in enumerate(key_ops):
        owner = owner_of(key_op.key)
        if owner == here:
            local.append(index)
        else:
            remote.setdefault(owner, []).append(index)
    gather = Gather(target, remaining=len(local) + len(remote), slots=[None] * len(key_ops), pages=[], scan_limit=None)
    remote_parts: list[tuple[str, BatchGetOp | BatchPutOp, GatherPart[T]]] = []
    for owner, indices in sorted(remote.items()):
        part: BatchGetOp | BatchPutOp
        if isinstance(op, BatchGetOp):
            part = BatchGetOp(tuple(op.keys[i] for i in indices))
        else:
            part = BatchPutOp(tuple(op.items[i] for i in indices))
        remote_parts.append((owner, part, GatherPart(gather, tuple(indices))))
    return remote_parts, [(key_ops[index], GatherPart(gather, (index,))) for index in local]


def merge_pages(pages: list[ScanPage], limit: int) -> ScanPage:
    merged: list[ScanItem] = list(heapq.merge(*(p.items for p in pages), key=lambda item: item.key))
    truncated = len(merged) > limit or any(p.truncated for p in pages)
    return ScanPage(tuple(merged[:limit]), truncated)
