"""Every refusal is an exception named after the node's error code; failures
to reach a node say whether the request went out."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Iterator

import pytest

from causal_kv import (
    CausalKVError,
    CausalTimeout,
    Client,
    InvalidValue,
    NoAnswer,
    NotFound,
    ServerError,
    TooLarge,
    Unauthorized,
    UnknownHistory,
    UnknownNode,
    Unreachable,
)
from conftest import LiveCluster

MAX_VALUE_BYTES = 1 << 20


def free_url() -> str:
    """The URL of a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class SilentServer:
    """Accepts connections and reads requests, then never answers (or, with
    `hang_up`, closes the connection): the request went out, its fate unknown."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
            self.requests.append(head)
            if self.hang_up:
                conn.close()
            else:
                self.open.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.open:
            conn.close()


@pytest.fixture(params=[False, True], ids=["silent", "hangs-up"])
def silent(request: pytest.FixtureRequest) -> Iterator[SilentServer]:
    server = SilentServer(hang_up=request.param)
    yield server
    server.close()


def test_every_error_is_a_causal_kv_error() -> None:
    for cls in (ServerError, Unreachable, NoAnswer, InvalidValue, CausalTimeout, TooLarge):
        assert issubclass(cls, CausalKVError)


def test_unauthorized_without_the_token_or_with_a_wrong_one(token_node: tuple[str, str], key: str) -> None:
    url, token = token_node
    for wrong in (None, token + "-wrong"):
        with Client([url], token=wrong) as client:
            with pytest.raises(Unauthorized) as refused:
                client.put(key, 1)
            assert (refused.value.status, refused.value.code, refused.value.url) == (401, "unauthorized", url)
            assert not refused.value.may_have_happened
            with pytest.raises(Unauthorized):
                client.status()
    with Client([url], token=token) as client:
        written = client.put(key, "let in")
        assert client.get(key, written.timestamp).value == "let in"
        assert client.session().get(key).value == "let in"


def test_too_large_values_and_keys_change_nothing(cluster: LiveCluster, client: Client, key: str) -> None:
    before = client.status(cluster.url(1)).applied
    with pytest.raises(TooLarge) as refused:
        client.put(key, "x" * MAX_VALUE_BYTES)
    assert (refused.value.status, refused.value.code) == (413, "too_large")
    with pytest.raises(TooLarge):
        client.put("k" * 1025, 1)
    assert client.status(cluster.url(1)).applied == before
    assert not client.get(key).found


def test_a_context_counting_writes_never_made(cluster: LiveCluster, client: Client, key: str) -> None:
    node1 = cluster.id(1)
    made = client.status(cluster.url(1)).applied[node1]
    forged = {node1: made + 1000}
    for attempt in (lambda: client.get(key, forged), lambda: client.put(key, 1, forged)):
        with pytest.raises(UnknownHistory) as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (409, "unknown_history")
        assert [(m.node, m.want) for m in refused.value.missing] == [(node1, made + 1000)]
    assert not client.get(key).found


def test_a_context_naming_a_node_outside_the_cluster(client: Client, key: str) -> None:
    with pytest.raises(UnknownNode) as refused:
        client.get(key, {"node99": 1})
    assert (refused.value.status, refused.value.code) == (400, "unknown_node")


def test_a_link_to_an_unknown_peer(cluster: LiveCluster, client: Client) -> None:
    with pytest.raises(NotFound) as refused:
        client.pause_link(cluster.url(1), "no-such-peer")
    assert refused.value.status == 404


def test_causal_timeout_when_a_node_cannot_get_the_context(cluster: LiveCluster, key: str) -> None:
    causal_wait = float(os.environ.get("CAUSAL_KV_CAUSAL_WAIT", "1"))
    with Client([cluster.url(1)]) as node1, Client([cluster.url(2)]) as node2:
        with cluster.paused((1, 2)):
            session = node1.session()
            session.put(key, "at node1 only")
            before = node2.status().applied
            for attempt in (lambda: node2.get(key, session.context), lambda: node2.put(key, 2, session.context)):
                started = time.monotonic()
                with pytest.raises(CausalTimeout) as refused:
                    attempt()
                assert time.monotonic() - started >= causal_wait * 0.9
                assert (refused.value.status, refused.value.code) == (503, "causal_timeout")
                assert refused.value.missing and refused.value.missing[0].node == cluster.id(1)
            assert node2.status().applied == before  # the put was not made


def test_unreachable_lists_every_url_tried() -> None:
    urls = [free_url(), free_url(), free_url()]
    with Client(urls, timeout=2.0) as client:
        with pytest.raises(Unreachable) as failed:
            client.put("k", 1)
    assert failed.value.urls == tuple(urls)
    assert all(not a.sent for a in failed.value.tried)
    assert not failed.value.may_have_happened
    for url in urls:
        assert url in str(failed.value)


def test_a_request_never_sent_goes_to_the_next_node(cluster: LiveCluster, key: str) -> None:
    dead = free_url()
    with Client([dead, cluster.url(2)]) as client:
        written = client.put(key, "second node")
        assert written.node == cluster.url(2) and written.dot.origin == cluster.id(2)
        assert client.get(key, written.timestamp).node == cluster.url(2)


def test_a_request_that_went_out_is_never_sent_again(cluster: LiveCluster, silent: SilentServer, key: str) -> None:
    with Client([silent.url, cluster.url(1)], timeout=0.5) as client:
        for attempt in (lambda: client.put(key, "maybe"), lambda: client.get(key)):
            with pytest.raises(NoAnswer) as failed:
                attempt()
            assert failed.value.urls == (silent.url,)
            assert failed.value.may_have_happened
    assert len(silent.requests) == 2 and silent.requests[0].startswith(b"PUT /v1/kv/")
    # The live node never got the put.
    with Client([cluster.url(1)]) as node1:
        assert not node1.get(key, node1.status().applied).found


def test_bad_input_is_refused_before_sending() -> None:
    with pytest.raises(InvalidValue):
        Client([])
    with pytest.raises(InvalidValue):
        Client(["127.0.0.1:5001"])
    with Client([free_url()]) as client:
        with pytest.raises(InvalidValue):
            client.put("", 1)
        with pytest.raises(InvalidValue):
            client.put("k", float("nan"))
        with pytest.raises(InvalidValue):
            client.put("k", {1, 2})
        with pytest.raises(InvalidValue):
            client.get("k", {"node1": -1})
