"""The live cluster the tests run against.

``cargo xtask pytest`` starts it (three nodes with the fault hook on and a
short ``causal_wait``, plus one node with a client token) and passes it in:

- ``CAUSAL_KV_NODES``: the three nodes' URLs, node1 first;
- ``CAUSAL_KV_TOKEN_NODE`` and ``CAUSAL_KV_TOKEN``: the token node and its token;
- ``KVCTL``: the kvctl binary.

Without them, every test that needs a node is skipped, saying so.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import pytest

from causal_kv import Client

T = TypeVar("T")

RUN_XTASK = "no live cluster: run `cargo xtask pytest` (it starts one and sets CAUSAL_KV_NODES)"
DEADLINE = 15.0
"""Seconds a poll for replication waits before the test fails."""


def poll(what: str, probe: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """Calls `probe` until it returns something other than None; fails the
    test after `deadline` seconds, naming `what`."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class LiveCluster:
    """Three nodes, node1..node3, with the fault hook on."""

    urls: list[str]
    ids: list[str]
    admin: Client

    def url(self, n: int) -> str:
        return self.urls[n - 1]

    def id(self, n: int) -> str:
        return self.ids[n - 1]

    def set_link(self, a: int, b: int, pause: bool) -> None:
        """Pauses or resumes replication from node `a` to node `b`, and checks the node says so."""
        if pause:
            links = self.admin.pause_link(self.url(a), self.id(b))
        else:
            links = self.admin.resume_link(self.url(a), self.id(b))
        assert (self.id(b) in links.paused) == pause, links

    @contextmanager
    def paused(self, *links: tuple[int, int]) -> Iterator[None]:
        """Replication paused on `links` (from, to) inside the block; resumed
        after it, and the nodes converged again."""
        try:
            for a, b in links:
                self.set_link(a, b, True)
            yield
        finally:
            for a, b in links:
                self.set_link(a, b, False)
        self.converge()

    def converge(self) -> dict[str, int]:
        """Waits until every node has applied the same writes; returns that clock."""

        def same() -> dict[str, int] | None:
            clocks = [self.admin.status(url).applied for url in self.urls]
            return clocks[0] if all(c == clocks[0] for c in clocks) else None

        return poll("the nodes to converge", same)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(RUN_XTASK)
    return value


@pytest.fixture(scope="session")
def cluster() -> Iterator[LiveCluster]:
    urls = [u for u in _env("CAUSAL_KV_NODES").split(",") if u]
    assert len(urls) >= 3, f"CAUSAL_KV_NODES lists {len(urls)} nodes; the tests need three"
    with Client(urls) as admin:
        ids = [admin.status(url).node for url in urls]
        yield LiveCluster(urls, ids, admin)


@pytest.fixture
def client(cluster: LiveCluster) -> Iterator[Client]:
    with Client(cluster.urls, timeout=10.0) as client:
        yield client


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key no other test (nor an earlier run) writes."""
    return f"{request.node.name}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def token_node() -> tuple[str, str]:
    """The URL of the node that needs a client token, and the token."""
    return _env("CAUSAL_KV_TOKEN_NODE"), _env("CAUSAL_KV_TOKEN")


@pytest.fixture
def kvctl() -> str:
    """The kvctl binary."""
    return _env("KVCTL")
