"""The store's messages as typed, immutable objects.

A clock (`Clock`) is a plain ``dict`` of node id to counter, as on the wire:
``{"node1": 2, "node2": 1}``; a missing entry counts as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

Clock = dict[str, int]
"""A vector clock: node id -> number of that node's writes counted."""


def merge(*clocks: Mapping[str, int]) -> Clock:
    """The pointwise maximum of `clocks`: a clock that counts what any of them counts."""
    merged: Clock = {}
    for clock in clocks:
        for node, seq in clock.items():
            if seq > merged.get(node, 0):
                merged[node] = seq
            else:
                merged.setdefault(node, seq)
    return merged


def covers(clock: Mapping[str, int], other: Mapping[str, int]) -> bool:
    """True when `clock` counts everything `other` counts."""
    return all(clock.get(node, 0) >= seq for node, seq in other.items())


@dataclass(frozen=True)
class Dot:
    """One write: the `seq`-th write accepted by the node `origin`."""

    origin: str
    seq: int

    def __str__(self) -> str:
        return f"{self.origin}:{self.seq}"


@dataclass(frozen=True)
class Sibling:
    """One of a key's concurrent writes."""

    dot: Dot
    timestamp: Clock
    """The write's clock: what its origin had applied, plus the write itself."""
    deleted: bool
    """True for a delete (a tombstone); its `value` is then ``None``."""
    value: Any


@dataclass(frozen=True)
class GetResult:
    """A read: the winner's value, every sibling, and the context to resolve them.

    A put with `context` replaces every sibling listed here (on every node, once
    it has replicated).
    """

    key: str
    found: bool
    """True when the key has a value (the winning sibling is not a delete)."""
    value: Any
    """The winner's value, the one every node shows (``None`` when not found)."""
    siblings: tuple[Sibling, ...]
    """Every concurrent write, in the same order on every node, winner last."""
    context: Clock
    """The answering node's applied clock, read together with the siblings."""
    node: str
    """The URL of the node that answered."""

    @property
    def winner(self) -> Sibling | None:
        """The sibling whose value is shown: the last one that is not a delete."""
        for sibling in reversed(self.siblings):
            if not sibling.deleted:
                return sibling
        return None

    @property
    def conflicted(self) -> bool:
        """True when concurrent writes left more than one sibling."""
        return len(self.siblings) > 1


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read: several keys read from one causally consistent cut of
    a node's state. No key shows a write without every write it depends on
    that another key shows; every read's `context` is the cut's clock."""

    reads: tuple[GetResult, ...]
    """One read per key, in the order asked."""
    context: Clock
    """The cut's clock."""
    node: str
    """The URL of the node that answered."""

    def __getitem__(self, key: str) -> GetResult:
        """The read of `key`."""
        for read in self.reads:
            if read.key == key:
                return read
        raise KeyError(key)

    @property
    def values(self) -> dict[str, Any]:
        """Each key's winning value (``None`` when not found)."""
        return {read.key: read.value for read in self.reads}


@dataclass(frozen=True)
class WriteResult:
    """The answer to a put, a delete or an atomic write (`Client.txn_write`)."""

    dot: Dot
    """The write's dot; every write of a transaction has this one."""
    timestamp: Clock
    """The write's clock; a context that counts the write."""
    node: str
    """The URL of the node that took the write."""


@dataclass(frozen=True)
class Missing:
    """A context entry a node lacks: it has `have` of `node`'s writes, `want` were asked for."""

    node: str
    have: int
    want: int


@dataclass(frozen=True)
class BufferedEvent:
    """A write a node has received but cannot apply yet, and what it waits for."""

    dot: Dot
    key: str
    waiting_for: tuple[Missing, ...]


@dataclass(frozen=True)
class PeerStatus:
    """Replication to one peer, as a node sees it."""

    node: str
    url: str
    acked: Clock
    lag: int
    paused: bool
    reachable: bool
    last_error: str | None


@dataclass(frozen=True)
class Status:
    """``GET /status`` of one node."""

    node: str
    """The node's id."""
    applied: Clock
    """What the node has applied: a context it always accepts at once."""
    stable: Clock
    """Writes every node has applied."""
    buffered_total: int
    buffered_events: tuple[BufferedEvent, ...]
    log_len: int
    peers: tuple[PeerStatus, ...]
    url: str
    """The URL that answered."""
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    """The whole answer, fields not listed above included."""


@dataclass(frozen=True)
class Links:
    """The fault hook's answer: the peers to which replication from `node` is paused."""

    node: str
    paused: tuple[str, ...]
