"""The asyncio client: `AsyncClient` and its causal `AsyncSession`, the same
requests and rules as `Client` and `Session`, awaited."""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any, Mapping, Sequence, TypeVar

import httpx

from . import _wire
from ._session import A, SessionBase
from .types import Clock, GetResult, Links, Snapshot, Status, WriteResult

T = TypeVar("T")


class AsyncClient(_wire.Nodes[httpx.AsyncClient]):
    """`Client` for asyncio: every method is a coroutine. Connections are kept
    alive and reused by the coroutines of one event loop; ``await
    client.aclose()`` (or ``async with``) when done."""

    def _connect(self, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def get(self, key: str, context: Mapping[str, int] | None = None) -> GetResult:
        """See `Client.get`."""
        return await self._call(_wire.get(key, context))

    async def snapshot(self, keys: Sequence[str], context: Mapping[str, int] | None = None) -> Snapshot:
        """See `Client.snapshot`."""
        return await self._call(_wire.snapshot(keys, context))

    async def put(self, key: str, value: Any, context: Mapping[str, int] | None = None) -> WriteResult:
        """See `Client.put`."""
        return await self._call(_wire.put(key, value, context))

    async def delete(self, key: str, context: Mapping[str, int] | None = None) -> WriteResult:
        """See `Client.delete`."""
        return await self._call(_wire.delete(key, context))

    async def txn_write(
        self, writes: Mapping[str, Any], context: Mapping[str, int] | None = None, *, deletes: Sequence[str] = ()
    ) -> WriteResult:
        """See `Client.txn_write`."""
        return await self._call(_wire.txn_write(writes, deletes, context))

    async def status(self, node: str | None = None) -> Status:
        """See `Client.status`."""
        return await self._call(_wire.status(), node)

    async def links(self, node: str, secret: str | None = None) -> Links:
        """See `Client.links`."""
        return await self._call(_wire.links(secret), node)

    async def pause_link(self, node: str, peer: str, secret: str | None = None) -> Links:
        """See `Client.pause_link`."""
        return await self._call(_wire.set_link(peer, True, secret), node)

    async def resume_link(self, node: str, peer: str, secret: str | None = None) -> Links:
        """See `Client.resume_link`."""
        return await self._call(_wire.set_link(peer, False, secret), node)

    def session(
        self, context: Mapping[str, int] | None = None, path: str | os.PathLike[str] | None = None
    ) -> AsyncSession:
        """See `Client.session`."""
        return AsyncSession(self, context, path)

    async def aclose(self) -> None:
        """Closes the kept-alive connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, call: _wire.Call[T], node: str | None = None) -> T:
        failover = self._failover(call, node)
        for url, request in failover:
            try:
                return call.answer(url, await self._http.send(request))
            except httpx.RequestError as exc:
                failover.failed(url, exc)
        raise failover.exhausted()


class AsyncSession(SessionBase[AsyncClient]):
    """`Session` for asyncio. Tasks and threads may share it; bound to a
    session file, the file is read and written off the event loop."""

    async def get(self, key: str) -> GetResult:
        """See `Session.get`."""
        return await self._seen(await self.client.get(key, await self._snapshot()))

    async def snapshot(self, keys: Sequence[str]) -> Snapshot:
        """See `Session.snapshot`."""
        return await self._seen(await self.client.snapshot(keys, await self._snapshot()))

    async def put(self, key: str, value: Any) -> WriteResult:
        """See `Session.put`."""
        return await self._seen(await self.client.put(key, value, await self._snapshot()))

    async def delete(self, key: str) -> WriteResult:
        """See `Session.delete`."""
        return await self._seen(await self.client.delete(key, await self._snapshot()))

    async def txn_write(self, writes: Mapping[str, Any], *, deletes: Sequence[str] = ()) -> WriteResult:
        """See `Session.txn_write`."""
        return await self._seen(await self.client.txn_write(writes, await self._snapshot(), deletes=deletes))

    async def _snapshot(self) -> Clock:
        if self._state.path is None:
            return self._state.snapshot()
        return await asyncio.to_thread(self._state.snapshot)

    async def _seen(self, answer: A) -> A:
        if self._state.path is None:
            return self._state.seen(answer)
        return await asyncio.to_thread(self._state.seen, answer)
