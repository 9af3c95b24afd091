"""The `kvstore` command in leaderless mode, end to end: a detached 3-node cluster, two blind writes through two
nodes, `kvstore get` printing both siblings and how to resolve them, `kvstore put --context` resolving them."""

from __future__ import annotations

import re
from pathlib import Path

from kvstore.cluster import STATE_NAME, ClusterState
from tests.e2e.conftest import cluster_dir  # noqa: F401  (the fixture: every node it started is stopped)
from tests.e2e.support import kvstore, text


def test_siblings_are_printed_and_resolved_with_the_context(cluster_dir: Path) -> None:  # noqa: F811
    d = str(cluster_dir)
    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "3", "--mode", "leaderless", "--engine", "memory")
    assert up.returncode == 0, text(up)
    state = ClusterState.load(cluster_dir / STATE_NAME)
    assert state is not None
    urls = [rec.url for rec in state.nodes]

    for url, value in ((urls[0], "from n1"), (urls[1], "from n2")):
        put = kvstore("put", "doc", value, "--url", url)
        assert put.returncode == 0, text(put)

    got = kvstore("get", "doc", "--url", urls[2], "--r", "all")
    assert got.returncode == 0, text(got)
    lines = got.stdout.decode().splitlines()
    assert lines[:3] == ["doc: 2 concurrent values (siblings)", "  [1] from n1", "  [2] from n2"]
    hint = re.fullmatch(r"resolve them with: kvstore put doc VALUE --context (\S+)", lines[3])
    assert hint is not None and len(lines) == 4, lines
    context = hint.group(1)
    # --context also prints it to stderr, the same one the hint names.
    with_context = kvstore("get", "doc", "--url", urls[0], "--context")
    assert with_context.stderr.decode().splitlines() == [f"context: {context}"]

    resolved = kvstore("put", "doc", "merged", "--context", context, "--w", "all", "--url", urls[1])
    assert resolved.returncode == 0, text(resolved)
    assert resolved.stdout.decode() == "ok: doc = 6 bytes (3 replicas acknowledged)\n"

    for url in urls:
        one = kvstore("get", "doc", "--url", url)
        assert (one.returncode, one.stdout) == (0, b"merged"), text(one)

    bad = kvstore("put", "doc", "x", "--context", "not base64!", "--url", urls[0])
    assert bad.returncode == 2
    assert "--context is not base64" in bad.stderr.decode()

    down = kvstore("cluster", "down", "--purge", "--dir", d)
    assert down.returncode == 0, text(down)
