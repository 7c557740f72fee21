"""Client: reads, writes and deletes through the native API of a live cluster."""

from __future__ import annotations

from typing import Any

import pytest

from causal_kv import BadRequest, Client, Dot, GetResult, InvalidValue, covers
from conftest import LiveCluster, poll

VALUES: list[Any] = [
    0,
    -17,
    2**53,
    1.5,
    True,
    False,
    None,
    "",
    "naïve ☃ \"quoted\" \\ \n",
    [],
    {},
    [1, "two", [3.25, {"four": None}]],
    {"nested": {"deeper": {"deepest": [True, {"x": -1e-7}]}}},
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_any_json_value_comes_back_as_written(client: Client, key: str, value: Any) -> None:
    written = client.put(key, value)
    assert written.dot.origin == "node1" and written.dot.seq >= 1
    assert written.node == client.nodes[0]
    read = client.get(key, written.timestamp)
    assert read.found
    assert read.value == value
    assert type(read.value) is type(value)
    (only,) = read.siblings
    assert (only.dot, only.timestamp, only.deleted, only.value) == (written.dot, written.timestamp, False, value)
    assert read.winner == only and not read.conflicted
    assert covers(read.context, written.timestamp)


def test_keys_with_slashes_spaces_and_unicode(client: Client, key: str) -> None:
    for suffix in ["a/b/c", "with space", "ünï/çødé", "q?x=1&y=#frag", "%41"]:
        name = f"{key}/{suffix}"
        written = client.put(name, suffix)
        read = client.get(name, written.timestamp)
        assert (read.key, read.value) == (name, suffix)
    # %41 is a key of its own, not "A".
    assert not client.get(f"{key}/A").found


def test_unknown_key_reads_as_absent(client: Client, key: str) -> None:
    read = client.get(key)
    assert (read.found, read.value, read.siblings, read.winner) == (False, None, (), None)
    assert read.context  # the node's clock names every node


def test_a_delete_hides_the_key(client: Client, key: str) -> None:
    written = client.put(key, "doomed")
    deleted = client.delete(key, written.timestamp)
    assert deleted.dot == Dot("node1", written.dot.seq + 1)
    assert covers(deleted.timestamp, written.timestamp)
    read = client.get(key, deleted.timestamp)
    assert not read.found and read.value is None and read.winner is None
    # Nothing the delete replaced is left; at most its tombstone.
    assert all(s.deleted and s.dot == deleted.dot and s.value is None for s in read.siblings)
    again = client.put(key, "back", read.context)
    assert client.get(key, again.timestamp).value == "back"


def test_a_put_with_a_context_replaces_what_it_covers(client: Client, key: str) -> None:
    first = client.put(key, 1)
    second = client.put(key, 2, first.timestamp)
    read = client.get(key, second.timestamp)
    assert [s.value for s in read.siblings] == [2]


def test_writes_reach_every_node(cluster: LiveCluster, client: Client, key: str) -> None:
    client.put(key, {"everywhere": True})
    for url in cluster.urls:
        with Client([url]) as one:

            def shown() -> GetResult | None:
                read = one.get(key)
                return read if read.found else None

            read = poll(f"{url} to show the write", shown)
            assert read.value == {"everywhere": True} and read.node == url


def test_status_of_each_node(cluster: LiveCluster, client: Client, key: str) -> None:
    written = client.put(key, "counted")
    status = client.status()
    assert status.url == cluster.url(1) and status.node == cluster.id(1)
    assert covers(status.applied, written.timestamp)
    assert [p.node for p in status.peers] == [cluster.id(2), cluster.id(3)]
    assert all(p.url in cluster.urls and not p.paused for p in status.peers)
    assert status.buffered_total == 0 and status.buffered_events == ()
    assert status.raw["node"] == status.node
    third = client.status(cluster.url(3))
    assert (third.node, third.url) == (cluster.id(3), cluster.url(3))


def test_connections_are_kept_alive_and_reused(cluster: LiveCluster, key: str) -> None:
    with Client([cluster.url(1)]) as client:
        ports = set()
        for n in range(20):
            client.put(key, n)
            response = client._http.get(cluster.url(1) + "/health")
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(ports) == 1, ports


def test_a_snapshot_reads_several_keys_from_one_cut(cluster: LiveCluster, key: str) -> None:
    with Client([cluster.url(1)]) as at1, Client([cluster.url(2)]) as at2:
        session = at1.session()
        session.put(f"{key}/post", {"title": "hello"})
        session.put(f"{key}/comments", ["first!"])
        # At node2, the session waits until both writes are there.
        later = at2.session(session.context)
        snap = later.snapshot([f"{key}/comments", f"{key}/post", f"{key}/none"])
        assert [r.key for r in snap.reads] == [f"{key}/comments", f"{key}/post", f"{key}/none"]
        assert snap.values == {f"{key}/comments": ["first!"], f"{key}/post": {"title": "hello"}, f"{key}/none": None}
        assert snap[f"{key}/post"].found and not snap[f"{key}/none"].found
        assert all(r.context == snap.context for r in snap.reads)
        assert covers(snap.context, session.context) and snap.node == cluster.url(2)
        assert covers(later.context, snap.context)
        with pytest.raises(KeyError):
            snap["other"]


def test_a_snapshot_of_a_key_listed_twice_is_refused(client: Client, key: str) -> None:
    with pytest.raises(BadRequest, match="listed twice"):
        client.snapshot([key, key])
    with pytest.raises(InvalidValue):
        client.snapshot(key)
