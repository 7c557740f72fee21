"""What needs no node: answers and errors decoded, the error classes against
the node's codes, the session file's format and locking."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from causal_kv import (
    BadAnswer,
    CausalTimeout,
    Client,
    Dot,
    Missing,
    ServerError,
    errors,
    kvctl_session_path,
    load_context,
    merge,
    merge_into,
    WriteResult,
)
from causal_kv import _wire

ERROR_RS = Path(__file__).resolve().parents[3] / "crates" / "kvnode" / "src" / "error.rs"


def test_every_code_of_the_node_has_its_exception() -> None:
    if not ERROR_RS.exists():
        pytest.skip(f"{ERROR_RS} is not here (the package was copied out of the repository)")
    source = ERROR_RS.read_text()
    codes = set(re.findall(r'Error::\w+(?:\(.*?\)|\s*\{\s*\.\.\s*\}|\(\.\.\))\s*=>\s*"(\w+)"', source))
    assert len(codes) >= 12, codes
    for code in codes:
        cls = errors.ERRORS.get(code)
        assert cls is not None, f"no exception for the node's code {code!r}"
        assert cls.__name__ == "".join(part.title() for part in code.split("_")), cls


def test_an_error_body_becomes_its_exception() -> None:
    body = {
        "error": {
            "code": "causal_timeout",
            "message": "timed out after 1000 ms waiting for writes this node has not applied yet: node1 (have 0, need 2)",
            "missing": [{"node": "node1", "have": 0, "want": 2}],
        }
    }
    error = _wire.refusal("http://n", 503, json.dumps(body).encode())
    assert isinstance(error, CausalTimeout)
    assert (error.url, error.status, error.code) == ("http://n", 503, "causal_timeout")
    assert error.missing == (Missing("node1", 0, 2),)
    assert not error.may_have_happened
    assert "waiting for writes" in str(error)


def test_a_foreign_error_keeps_its_text() -> None:
    error = _wire.refusal("http://n", 502, b"Bad Gateway\n")
    assert type(error) is ServerError
    assert (error.code, error.message) == ("http_502", "Bad Gateway")


def test_a_success_that_is_not_the_message_may_have_happened() -> None:
    call = _wire.put("k", 1, None)
    with pytest.raises(BadAnswer) as bad:
        call.answer("http://n", httpx.Response(200, content=b"<html>"))
    assert bad.value.may_have_happened


def test_requests_are_encoded_as_the_node_reads_them() -> None:
    call = _wire.get("a b/c?", {"node1": 2})
    assert call.path == "/v1/kv/a%20b/c%3F"
    assert call.params == {"context": '{"node1":2}'}
    assert _wire.get("k", {}).params is None
    put = _wire.put("k", {"ü": [1.5, None]}, {"node2": 1})
    assert put.body is not None and json.loads(put.body) == {"value": {"ü": [1.5, None]}, "context": {"node2": 1}}
    assert put.headers["Content-Type"] == "application/json"
    assert _wire.delete("k", None).body is None
    link = _wire.set_link("node2", True, None)
    assert (link.method, link.path, link.body, link.headers["Content-Type"]) == (
        "POST",
        "/admin/v1/links/node2/pause",
        b"{}",
        "application/json",
    )


def test_a_transaction_is_encoded_as_the_node_reads_it() -> None:
    call = _wire.txn_write({"b": {"x": 1}, "a": None}, ["c", "d"], {"node1": 3})
    assert (call.method, call.path, call.headers["Content-Type"]) == ("POST", "/v1/txn/write", "application/json")
    assert call.body is not None and json.loads(call.body) == {
        "writes": [
            {"key": "b", "op": {"put": {"x": 1}}},
            {"key": "a", "op": {"put": None}},  # None puts null: it is no delete
            {"key": "c", "op": "delete"},
            {"key": "d", "op": "delete"},
        ],
        "context": {"node1": 3},
    }
    # No context, no field; what the node checks (no writes, a key twice) is sent as is.
    assert _wire.txn_write({}, (), None).body == b'{"writes":[]}'
    twice = _wire.txn_write({"k": 1}, ["k"], None)
    assert twice.body is not None and [w["key"] for w in json.loads(twice.body)["writes"]] == ["k", "k"]
    answer = twice.answer(
        "http://n", httpx.Response(200, json={"dot": {"origin": "node1", "seq": 4}, "timestamp": {"node1": 4}})
    )
    assert answer == WriteResult(Dot("node1", 4), {"node1": 4}, "http://n")


def test_a_transaction_that_cannot_be_sent_is_refused_here() -> None:
    cases: list[tuple[dict[str, Any], list[str]]] = [({"": 1}, []), ({"k": 1}, [""]), ({"k": float("nan")}, [])]
    for writes, deletes in cases:
        with pytest.raises(errors.InvalidValue):
            _wire.txn_write(writes, deletes, None)
    with pytest.raises(errors.InvalidValue):
        _wire.txn_write({"k": 1}, "ab", None)  # one string is not a list of keys
    with pytest.raises(errors.InvalidValue):
        _wire.txn_write([("k", 1)], (), None)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidValue):
        _wire.txn_write({"k": 1}, (), {"node1": -1})


def test_clocks_merge_pointwise() -> None:
    assert merge({"a": 1, "b": 5}, {"a": 3, "c": 0}) == {"a": 3, "b": 5, "c": 0}


def test_session_files_are_kvctl_files(tmp_path: Path) -> None:
    path = kvctl_session_path("s-1.x", state_home=tmp_path)
    assert path == tmp_path / "kvctl" / "sessions" / "s-1.x.json"
    assert load_context(path) == {}
    assert merge_into(path, {"node2": 1, "node1": 3}) == {"node1": 3, "node2": 1}
    assert merge_into(path, {"node1": 2, "node3": 4}) == {"node1": 3, "node2": 1, "node3": 4}
    # What kvctl writes: one compact JSON clock.
    assert path.read_text() == '{"node1":3,"node2":1,"node3":4}'
    for bad in ["", "../x", "a/b", ".hidden"]:
        with pytest.raises(errors.InvalidValue):
            kvctl_session_path(bad, state_home=tmp_path)
    path.write_text('{"node1": "three"}')
    with pytest.raises(errors.InvalidValue):
        load_context(path)


def test_a_session_loads_and_saves_its_context(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"node1":2}')
    with Client(["http://127.0.0.1:9"]) as client:
        session = client.session({"node2": 1})
        session.load(path)
        assert session.context == {"node1": 2, "node2": 1}
        assert session.save(tmp_path / "other.json") == {"node1": 2, "node2": 1}
        bound = client.session(path=path)
        assert bound.context == {"node1": 2}
        merge_into(path, {"node3": 7})  # another process of the session
        assert bound.context == {"node1": 2, "node3": 7}


def _merge_many(path: str, node: str) -> None:
    for n in range(1, 21):
        merge_into(path, {node: n})


def test_concurrent_processes_lose_no_clock(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")
    workers = [multiprocessing.Process(target=_merge_many, args=(path, f"node{i}")) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert load_context(path) == {f"node{i}": 20 for i in range(6)}
