"""The causal bookkeeping that `Session` and `AsyncSession` share."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Generic, Mapping, TypeVar

from . import session_file
from ._wire import check_clock
from .types import Clock, GetResult, Snapshot, WriteResult, merge

A = TypeVar("A", GetResult, Snapshot, WriteResult)
C = TypeVar("C")


class SessionState:
    """A session's context: the merge of every clock it has received, under a
    lock so that threads may share the session. A request sends a snapshot of
    it; its answer's clock is merged back. Bound to a file, every merge is
    also merged into the file (as ``kvctl --session`` does)."""

    def __init__(self, context: Mapping[str, int] | None, path: str | os.PathLike[str] | None) -> None:
        self._lock = threading.Lock()
        self._path = Path(path) if path is not None else None
        start = check_clock(context) or {}
        if self._path is not None:
            start = merge(start, session_file.load_context(self._path))
        self._context: Clock = start

    @property
    def path(self) -> Path | None:
        return self._path

    def snapshot(self) -> Clock:
        """The context to send; bound to a file, what the file holds is merged
        in first (another process of the session may have added to it)."""
        if self._path is not None:
            self.load(self._path)
        with self._lock:
            return dict(self._context)

    def observe(self, clock: Clock) -> None:
        """Merges an answer's clock into the context (and the file)."""
        if self._path is not None:
            clock = merge(clock, session_file.merge_into(self._path, clock))
        with self._lock:
            self._context = merge(self._context, clock)

    def seen(self, answer: A) -> A:
        """Observes an answer's clock (a read's context, a write's timestamp); returns the answer."""
        self.observe(answer.timestamp if isinstance(answer, WriteResult) else answer.context)
        return answer

    def save(self, path: str | os.PathLike[str]) -> Clock:
        return session_file.merge_into(path, self.snapshot())

    def load(self, path: str | os.PathLike[str]) -> None:
        loaded = session_file.load_context(path)
        with self._lock:
            self._context = merge(self._context, loaded)


class SessionBase(Generic[C]):
    """What `Session` and `AsyncSession` share: the client, the context, files."""

    def __init__(
        self, client: C, context: Mapping[str, int] | None = None, path: str | os.PathLike[str] | None = None
    ) -> None:
        self.client = client
        self._state = SessionState(context, path)

    @property
    def context(self) -> Clock:
        """Everything the session has observed (a copy)."""
        return self._state.snapshot()

    def save(self, path: str | os.PathLike[str]) -> Clock:
        """Merges the context into the session file `path`; returns the file's new context."""
        return self._state.save(path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Merges the context saved in `path` into this session's."""
        self._state.load(path)
