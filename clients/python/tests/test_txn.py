"""Atomic writes (``POST /v1/txn/write``): the writes of a transaction share
one dot, and a snapshot read at another node shows every one of them; the
node's refusals are its exceptions."""

from __future__ import annotations

import pytest

from causal_kv import BadRequest, Client, TooLarge, covers
from conftest import LiveCluster

MAX_TXN_KEYS = 1000
"""The nodes' default ``max_txn_keys``."""


def test_a_transaction_is_seen_whole_with_one_dot_at_another_node(cluster: LiveCluster, key: str) -> None:
    a, b, c, d = (f"{key}/{name}" for name in "abcd")
    with Client([cluster.url(1)]) as node1, Client([cluster.url(2)]) as node2, Client([cluster.url(3)]) as node3:
        session = node1.session()
        old = session.put(c, "old")
        # node3 lacks the transaction while the link is paused: the deletes
        # are not stable, so their tombstones stay to be read.
        with cluster.paused((1, 3)):
            written = session.txn_write({a: {"n": 1}, b: None}, deletes=[c, d])
            assert written.node == cluster.url(1)
            assert covers(written.timestamp, old.timestamp)
            assert covers(session.context, written.timestamp)

            moved = node2.session(session.context)
            snap = moved.snapshot([a, b, c, d])
            assert snap.node == cluster.url(2)
            for k in (a, b, c, d):
                assert [(s.dot, s.timestamp) for s in snap[k].siblings] == [(written.dot, written.timestamp)], k
            assert snap.values == {a: {"n": 1}, b: None, c: None, d: None}
            # None is a put of JSON null, not a delete.
            assert snap[b].found and not snap[b].siblings[0].deleted
            assert [s.deleted for k in (c, d) for s in snap[k].siblings] == [True, True]
            assert not snap[c].found and not snap[d].found
            assert covers(moved.context, written.timestamp)
        # Once node3 has it, the session reads the whole transaction there too.
        at_node3 = node3.session(moved.context)
        assert at_node3.snapshot([a, b, c, d]).values == {a: {"n": 1}, b: None, c: None, d: None}


def test_a_transaction_replaces_the_siblings_its_context_covers(client: Client, key: str) -> None:
    a, b = f"{key}/a", f"{key}/b"
    first = client.txn_write({a: 1, b: 2})
    second = client.txn_write({b: 3, a: 4}, first.timestamp)
    assert second.dot != first.dot and covers(second.timestamp, first.timestamp)
    snap = client.snapshot([a, b], second.timestamp)
    assert snap.values == {a: 4, b: 3}
    assert [s.dot for k in (a, b) for s in snap[k].siblings] == [second.dot, second.dot]


def test_a_key_listed_twice_is_a_bad_request(client: Client, key: str) -> None:
    session = client.session()
    with pytest.raises(BadRequest) as refused:
        session.txn_write({key: 1, f"{key}/other": 2}, deletes=[key])
    assert refused.value.status == 400 and "listed twice" in refused.value.message
    assert session.context == {}
    # Nothing of it was written.
    snap = client.snapshot([key, f"{key}/other"])
    assert all(not read.siblings for read in snap.reads)


def test_empty_writes_are_a_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest) as refused:
        client.txn_write({})
    assert refused.value.status == 400
    assert refused.value.message == "writes is empty: list at least one write"
    with pytest.raises(BadRequest):
        client.session().txn_write({}, deletes=[])


def test_more_writes_than_max_txn_keys_are_too_large(client: Client, key: str) -> None:
    with pytest.raises(TooLarge) as refused:
        client.txn_write({f"{key}/{i}": i for i in range(MAX_TXN_KEYS + 1)})
    assert refused.value.status == 413
