"""The synchronous client: `Client` and its causal `Session`."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Mapping, Sequence, TypeVar

import httpx

from . import _wire
from ._session import SessionBase
from .types import GetResult, Links, Snapshot, Status, WriteResult

T = TypeVar("T")


class Client(_wire.Nodes[httpx.Client]):
    """A client of one or more nodes, tried in order.

    A request goes to the next node only when it could not be sent to this one
    (no connection could be made): one that may have reached a node is never
    sent again, and fails with `NoAnswer`. Connections are kept alive and
    reused; the client is safe to share between threads. Close it (or use it
    as a context manager) when done.
    """

    def _connect(self, options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(**options)

    def get(self, key: str, context: Mapping[str, int] | None = None) -> GetResult:
        """Reads `key` with every sibling, after everything `context` counts."""
        return self._call(_wire.get(key, context))

    def snapshot(self, keys: Sequence[str], context: Mapping[str, int] | None = None) -> Snapshot:
        """Reads every key of `keys` from one causally consistent cut of a
        node's state, after everything `context` counts."""
        return self._call(_wire.snapshot(keys, context))

    def put(self, key: str, value: Any, context: Mapping[str, int] | None = None) -> WriteResult:
        """Writes `value` (any JSON value) to `key`, after everything `context`
        counts; it replaces every sibling the context covers."""
        return self._call(_wire.put(key, value, context))

    def delete(self, key: str, context: Mapping[str, int] | None = None) -> WriteResult:
        """Deletes `key` (a tombstone), after everything `context` counts."""
        return self._call(_wire.delete(key, context))

    def txn_write(
        self, writes: Mapping[str, Any], context: Mapping[str, int] | None = None, *, deletes: Sequence[str] = ()
    ) -> WriteResult:
        """Writes several keys in one atomic transaction, after everything
        `context` counts: a put of each value of `writes` (a mapping of key to
        any JSON value; ``None`` puts JSON null, it does not delete) and a
        delete of each key of `deletes`. Every node applies all of them at
        once or none: no read shows part of the transaction.

        The writes share one dot, the answer's `dot`; each replaces the
        siblings of its key that `context` covers. A key may be listed once
        only (`BadRequest`), and at least one write is needed (`BadRequest`);
        more writes or bytes than the node's ``max_txn_keys`` or
        ``max_txn_bytes`` are `TooLarge`. For example,
        ``client.txn_write({"a": 1, "b": None}, deletes=["c"])`` sets ``a`` to
        1 and ``b`` to null, and deletes ``c``, under one dot.
        """
        return self._call(_wire.txn_write(writes, deletes, context))

    def status(self, node: str | None = None) -> Status:
        """``GET /status`` of `node` (a URL), or of the first node that answers."""
        return self._call(_wire.status(), node)

    def links(self, node: str, secret: str | None = None) -> Links:
        """The fault hook: the peers to which replication from `node` is paused."""
        return self._call(_wire.links(secret), node)

    def pause_link(self, node: str, peer: str, secret: str | None = None) -> Links:
        """The fault hook (nodes started with ``faults = true``): pauses
        replication from the node at URL `node` to the peer with id `peer`.
        `secret` is the cluster secret, when the nodes have one."""
        return self._call(_wire.set_link(peer, True, secret), node)

    def resume_link(self, node: str, peer: str, secret: str | None = None) -> Links:
        """The fault hook: resumes replication from `node` to `peer`."""
        return self._call(_wire.set_link(peer, False, secret), node)

    def session(
        self, context: Mapping[str, int] | None = None, path: str | os.PathLike[str] | None = None
    ) -> Session:
        """A causal session starting from `context`; bound to the session file
        `path` (see `Session`) when given."""
        return Session(self, context, path)

    def close(self) -> None:
        """Closes the kept-alive connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, call: _wire.Call[T], node: str | None = None) -> T:
        failover = self._failover(call, node)
        for url, request in failover:
            try:
                return call.answer(url, self._http.send(request))
            except httpx.RequestError as exc:
                failover.failed(url, exc)
        raise failover.exhausted()

class Session(SessionBase[Client]):
    """A causal session: each request carries the merge of every clock the
    session has received as its context, so it reads its own writes and never
    reads older than before, at whichever node. Threads may share it.

    The context can be saved to and loaded from files in the format of
    ``kvctl --session`` (`causal_kv.kvctl_session_path` names kvctl's). Bound
    to a file (``client.session(path=...)``), the session reads the file before
    each request and merges each answer into it, as a kvctl command does.
    """

    def get(self, key: str) -> GetResult:
        """Reads `key`, seeing at least everything this session has seen. The
        answer's `value` is the winner's; a put in this session afterwards
        replaces every sibling it lists."""
        return self._state.seen(self.client.get(key, self._state.snapshot()))

    def snapshot(self, keys: Sequence[str]) -> Snapshot:
        """Reads `keys` from one causal cut, seeing at least everything this
        session has seen."""
        return self._state.seen(self.client.snapshot(keys, self._state.snapshot()))

    def put(self, key: str, value: Any) -> WriteResult:
        """Writes `value` to `key`, after everything this session has seen."""
        return self._state.seen(self.client.put(key, value, self._state.snapshot()))

    def delete(self, key: str) -> WriteResult:
        """Deletes `key`, after everything this session has seen."""
        return self._state.seen(self.client.delete(key, self._state.snapshot()))

    def txn_write(self, writes: Mapping[str, Any], *, deletes: Sequence[str] = ()) -> WriteResult:
        """Puts each value of `writes` to its key and deletes each key of
        `deletes`, in one atomic transaction (see `Client.txn_write`), after
        everything this session has seen; the session then counts it."""
        return self._state.seen(self.client.txn_write(writes, self._state.snapshot(), deletes=deletes))

