"""Concurrent writes on both sides of a partition become siblings, the same on
every node, and a put with their context resolves them."""

from __future__ import annotations

from causal_kv import Client, GetResult, covers
from conftest import LiveCluster, poll


def test_a_partition_leaves_two_siblings_and_a_put_resolves_them(cluster: LiveCluster, key: str) -> None:
    node1, node2 = Client([cluster.url(1)]), Client([cluster.url(2)])
    try:
        with cluster.paused((1, 2), (2, 1)):
            red = node1.put(key, "red")
            blue = node2.put(key, "blue")
            # Each side shows its own write only.
            assert node1.get(key).value == "red"
            assert node2.get(key).value == "blue"
        # Healed and converged: both writes are siblings, at every node.
        reads: list[GetResult] = []
        for url in cluster.urls:
            with Client([url]) as one:

                def both(one: Client = one) -> GetResult | None:
                    read = one.get(key)
                    return read if len(read.siblings) == 2 else None

                reads.append(poll(f"{url} to show both siblings", both))
        first = reads[0]
        assert first.conflicted
        assert {s.dot for s in first.siblings} == {red.dot, blue.dot}
        assert {s.value for s in first.siblings} == {"red", "blue"}
        by_dot = {s.dot: s for s in first.siblings}
        assert by_dot[red.dot].timestamp == red.timestamp
        assert by_dot[blue.dot].timestamp == blue.timestamp
        # The same siblings, in the same order, and so the same winner, everywhere.
        for read in reads[1:]:
            assert read.siblings == first.siblings
            assert read.value == first.value
        assert first.winner is not None and first.winner == first.siblings[-1]
        assert first.value == first.winner.value
        assert covers(first.context, red.timestamp) and covers(first.context, blue.timestamp)

        # A put with the read's context replaces both, on every node.
        purple = node2.put(key, "purple", first.context)
        for url in cluster.urls:
            with Client([url]) as one:
                read = one.get(key, purple.timestamp)
                assert [(s.dot, s.value) for s in read.siblings] == [(purple.dot, "purple")]
    finally:
        node1.close()
        node2.close()


def test_a_session_resolves_the_siblings_it_has_read(cluster: LiveCluster, key: str) -> None:
    with cluster.paused((1, 3), (3, 1)):
        with Client([cluster.url(1)]) as node1, Client([cluster.url(3)]) as node3:
            node1.put(key, 1)
            node3.put(key, 3)
    with Client(cluster.urls) as client:

        def both() -> GetResult | None:
            read = client.get(key)
            return read if len(read.siblings) == 2 else None

        poll("both siblings at node1", both)
        session = client.session()
        assert session.get(key).conflicted
        session.put(key, 4)
        read = session.get(key)
        assert read.value == 4 and not read.conflicted
