"""Fixtures for server tests: real nodes on loopback ports inside the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from kvstore.server.inprocess import InProcessCluster, loopback_config

PARTITIONS = 16


@pytest.fixture
async def cluster() -> AsyncIterator[InProcessCluster]:
    """Three nodes, all up, each owning a third of the partitions."""
    async with InProcessCluster(loopback_config(3, partitions=PARTITIONS)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
