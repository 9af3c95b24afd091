"""The public histories in tests/data: every file listed with its verdict, and each one a well-formed history.

The Knossos verdicts are checked in test_linearizable.py; the Elle list-append histories wait for the
transactional checker, so here they are held to the shape that checker will read.
"""

from __future__ import annotations

import csv
from pathlib import Path

from chaos.history import load


def _expected(folder: Path) -> list[dict[str, str]]:
    with (folder / "expected.tsv").open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_every_history_file_has_a_verdict_and_every_verdict_a_file(public_histories: Path) -> None:
    for name, count in (("knossos", 120), ("elle", 3)):
        folder = public_histories / name
        listed = {row["file"] for row in _expected(folder)}
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*.jsonl")}
        assert len(listed) == count
        assert listed == on_disk


def test_elle_histories_are_list_append_transactions(public_histories: Path) -> None:
    elle = public_histories / "elle"
    for row in _expected(elle):
        assert row["serializable"] == "false"
        ops = load(elle / row["file"]).ops()
        assert ops, row["file"]
        for op in ops:
            assert op.f == "txn"
            for micro_op in op.value:
                f, key, value = micro_op
                assert f in ("append", "r")
                assert isinstance(key, str)
                if f == "append":
                    assert isinstance(value, int)
                else:
                    assert value is None or isinstance(value, (list, tuple))
