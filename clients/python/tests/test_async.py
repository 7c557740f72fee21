"""AsyncClient and AsyncSession: the same requests and rules, awaited."""

from __future__ import annotations

import asyncio

import pytest

from causal_kv import AsyncClient, BadRequest, CausalTimeout, Unreachable, covers
from conftest import LiveCluster
from test_errors import free_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_put_get_delete(cluster: LiveCluster, key: str) -> None:
    async with AsyncClient(cluster.urls) as client:
        written = await client.put(key, {"async": [1, 2]})
        read = await client.get(key, written.timestamp)
        assert read.value == {"async": [1, 2]} and read.siblings[0].dot == written.dot
        deleted = await client.delete(key, read.context)
        gone = await client.get(key, deleted.timestamp)
        assert not gone.found and all(s.deleted for s in gone.siblings)
        status = await client.status(cluster.url(2))
        assert status.node == cluster.id(2)
        session = client.session(deleted.timestamp)
        await session.put(f"{key}/a", 1)
        snap = await session.snapshot([key, f"{key}/a"])
        assert snap.values == {key: None, f"{key}/a": 1}
        assert covers(session.context, snap.context)


async def test_async_txn_write_is_seen_whole_at_another_node(cluster: LiveCluster, key: str) -> None:
    a, b, c = f"{key}/a", f"{key}/b", f"{key}/c"
    async with AsyncClient([cluster.url(1)]) as node1, AsyncClient([cluster.url(3)]) as node3:
        session = node1.session()
        written = await session.txn_write({a: [1], b: None}, deletes=[c])
        assert covers(session.context, written.timestamp)
        moved = node3.session(session.context)
        snap = await moved.snapshot([a, b, c])
        assert snap.values == {a: [1], b: None, c: None}
        assert snap[a].siblings[0].dot == written.dot and snap[b].siblings[0].dot == written.dot
        assert snap[b].found and not snap[c].found
        # The delete's tombstone may already be collected (stable): if shown, it has the dot.
        assert all(s.dot == written.dot and s.deleted for s in snap[c].siblings)
        again = await node3.txn_write({a: [2]}, snap.context)
        assert (await node3.get(a, again.timestamp)).siblings[0].dot == again.dot
        with pytest.raises(BadRequest) as refused:
            await moved.txn_write({a: 1}, deletes=[a])
        assert "listed twice" in refused.value.message


async def test_concurrent_tasks_share_a_session_across_nodes(cluster: LiveCluster, key: str) -> None:
    clients = [AsyncClient([url]) for url in cluster.urls]
    try:
        session = clients[0].session()
        stamps = await asyncio.gather(*(session.put(f"{key}/{i}", i) for i in range(30)))
        assert all(covers(session.context, s.timestamp) for s in stamps)
        # Read-your-writes at the two other nodes, at once.
        for other in clients[1:]:
            moved = other.session(session.context)
            reads = await asyncio.gather(*(moved.get(f"{key}/{i}") for i in range(30)))
            assert [r.value for r in reads] == list(range(30))
    finally:
        for client in clients:
            await client.aclose()


async def test_async_causal_timeout_and_recovery(cluster: LiveCluster, key: str) -> None:
    async with AsyncClient([cluster.url(3)]) as node3, AsyncClient([cluster.url(2)]) as node2:
        with cluster.paused((3, 2)):
            session = node3.session()
            await session.put(key, "from node3")
            moved = node2.session(session.context)
            with pytest.raises(CausalTimeout):
                await moved.get(key)
        assert (await moved.get(key)).value == "from node3"


async def test_async_unreachable_lists_every_url() -> None:
    urls = [free_url(), free_url()]
    async with AsyncClient(urls) as client:
        with pytest.raises(Unreachable) as failed:
            await client.get("k")
    assert failed.value.urls == tuple(urls)
