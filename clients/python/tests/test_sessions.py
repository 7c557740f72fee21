"""Sessions: read-your-writes and monotonic reads across nodes, paused links
included, and one session shared by threads."""

from __future__ import annotations

import threading

import pytest

from causal_kv import CausalTimeout, Client, covers, merge
from conftest import LiveCluster


def test_a_session_reads_its_writes_at_every_node(cluster: LiveCluster, client: Client, key: str) -> None:
    session = client.session()
    for n, url in enumerate(cluster.urls, start=1):
        with Client([url]) as at_node:
            moved = at_node.session(session.context)
            moved.put(key, n)
            # The next node is asked at once: it waits until it has the write.
            session = at_node.session(moved.context)
    for url in cluster.urls:
        with Client([url]) as at_node:
            assert at_node.session(session.context).get(key).value == 3


def test_a_paused_link_delays_a_session_but_never_shows_it_older_data(
    cluster: LiveCluster, client: Client, key: str
) -> None:
    node1, node2, node3 = (Client([cluster.url(n)]) for n in (1, 2, 3))
    try:
        node1.put(key, "before")
        converged = cluster.converge()
        with cluster.paused((1, 2)):
            session = node1.session()
            written = session.put(key, "after")
            assert session.context == written.timestamp
            # node3 still gets node1's writes: the session reads its write there.
            at_node3 = node3.session(session.context)
            assert at_node3.get(key).value == "after"
            # node2 does not have it, and says so instead of answering "before".
            at_node2 = node2.session(at_node3.context)
            with pytest.raises(CausalTimeout) as refused:
                at_node2.get(key)
            assert refused.value.status == 503 and refused.value.url == cluster.url(2)
            assert [(m.node, m.have, m.want) for m in refused.value.missing] == [
                (cluster.id(1), converged[cluster.id(1)], written.timestamp[cluster.id(1)])
            ]
            assert node2.get(key).value == "before"  # without the session's context
        # Once the link is back, the same session reads its write at node2.
        read = at_node2.get(key)
        assert read.value == "after" and covers(read.context, written.timestamp)
    finally:
        for c in (node1, node2, node3):
            c.close()


def test_reads_are_monotonic_across_nodes(cluster: LiveCluster, client: Client, key: str) -> None:
    writer = client.session()
    reader_context: dict[str, int] = {}
    seen = -1
    for turn in range(12):
        writer.put(key, turn)
        with Client([cluster.url(turn % 3 + 1)]) as at_node:
            reader = at_node.session(reader_context)
            value = reader.get(key).value
            reader_context = reader.context
        if value is None:
            assert seen == -1, f"read nothing after {seen}"
        else:
            assert value >= seen, f"read {value} after {seen}"
            seen = value
    # With the writer's context too, the reader sees the last write.
    with Client([cluster.url(3)]) as node3:
        reader = node3.session(merge(reader_context, writer.context))
        assert reader.get(key).value == 11


def test_threads_share_one_session(client: Client, key: str) -> None:
    session = client.session()
    threads = 8
    per_thread = 10
    written: list[dict[str, int]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                stamp = session.put(f"{key}/{t}", i).timestamp
                with lock:
                    written.append(stamp)
                # Read-your-writes holds for every thread of the session.
                assert session.get(f"{key}/{t}").value == i
        except BaseException as exc:  # reported below
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not failures, failures
    assert len(written) == threads * per_thread
    assert all(covers(session.context, stamp) for stamp in written)
