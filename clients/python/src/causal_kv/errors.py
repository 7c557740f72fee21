"""Every failure is a `CausalKVError`.

- A node refused the request: a `ServerError`, of the class named after the
  error code in the node's ``{"error":{"code":...,"message":...}}`` body
  (`CausalTimeout` for ``causal_timeout``, and so on; an unknown code is a
  plain `ServerError`).
- No node answered: `Unreachable` when no request was ever sent (no connection
  could be made to any node, so nothing happened), `NoAnswer` when a request
  went out and its answer did not come (it may have been applied). Both list
  every URL tried, with why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .types import Missing


ERRORS: dict[str, type[ServerError]] = {}
"""The class of each error code the nodes send (filled in by each class)."""


class CausalKVError(Exception):
    """Base class of every error of this package."""


class InvalidValue(CausalKVError, ValueError):
    """A value, key, context or node URL that cannot be sent."""


class ServerError(CausalKVError):
    """A node answered with an error.

    `may_have_happened` is False for every refusal except `BadAnswer` (a
    success whose body could not be read).
    """

    code_name: ClassVar[str | None] = None
    """The error code of this class (None: any code without a class of its own)."""

    def __init_subclass__(cls, code: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code_name = code
            ERRORS[code] = cls

    def __init__(
        self,
        url: str,
        status: int,
        code: str,
        message: str,
        missing: tuple[Missing, ...] = (),
    ) -> None:
        super().__init__(f"{url} refused the request ({status} {code}): {message}")
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        self.missing = missing
        """For `CausalTimeout` and `UnknownHistory`: the context entries the node lacks."""

    @property
    def may_have_happened(self) -> bool:
        """Whether the request may have taken effect at the node."""
        return 200 <= self.status < 300


class BadRequest(ServerError, code="bad_request"):
    """``bad_request`` (400): the request is malformed."""


class UnknownNode(ServerError, code="unknown_node"):
    """``unknown_node`` (400): a context names a node outside the cluster."""


class Unauthorized(ServerError, code="unauthorized"):
    """``unauthorized`` (401): the node needs a bearer token (``Client(token=...)``)."""


class NotFound(ServerError, code="not_found"):
    """``not_found`` (404): no such route or resource (the fault hook is off, an unknown peer)."""


class RequestTimeout(ServerError, code="request_timeout"):
    """``request_timeout`` (408): the request took longer than the node's ``request_timeout``."""


class UnknownHistory(ServerError, code="unknown_history"):
    """``unknown_history`` (409): the context counts writes their origin never made.

    Waiting cannot help: the context is wrong (forged, or from another cluster).
    """


class Conflict(ServerError, code="conflict"):
    """``conflict`` (409): a membership change the cluster does not allow (an
    id in use at another address, a removed id, or the last member)."""


class TooLarge(ServerError, code="too_large"):
    """``too_large`` (413): the key, the value or the body is over a limit."""


class UnsupportedMediaType(ServerError, code="unsupported_media_type"):
    """``unsupported_media_type`` (415): the body was not sent as JSON."""


class Internal(ServerError, code="internal"):
    """``internal`` (500): a bug or a storage failure at the node."""


class CausalTimeout(ServerError, code="causal_timeout"):
    """``causal_timeout`` (503): the node did not receive, within its
    ``causal_wait``, the writes the context counts. Nothing was done; retry
    later, or at a node that has them."""


class BufferFull(ServerError, code="buffer_full"):
    """``buffer_full`` (503): the node's buffer of undeliverable writes is full."""


class Unavailable(ServerError, code="unavailable"):
    """``unavailable`` (503): the node is stopping or cannot take work now."""


class Recovering(ServerError, code="recovering"):
    """``recovering`` (503): the node is not live yet. It is checking that no
    peer holds more of its writes, or copying a peer's state after it lost its
    data; the message says what it waits for. Nothing was done; retry later,
    or at another node."""


class BadAnswer(ServerError, code="bad_answer"):
    """A success (2xx) whose body is not the expected message: the request may
    have been applied."""


@dataclass(frozen=True)
class Attempt:
    """One node tried: its URL, why it failed, and whether the request went out."""

    url: str
    error: str
    sent: bool


class ConnectionFailure(CausalKVError):
    """No node answered. `tried` lists every URL tried, in order, with why."""

    def __init__(self, summary: str, tried: tuple[Attempt, ...]) -> None:
        listed = "; ".join(f"{a.url}: {a.error}" for a in tried)
        super().__init__(f"{summary}: {listed}")
        self.tried = tried

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs tried, in order."""
        return tuple(a.url for a in self.tried)

    @property
    def may_have_happened(self) -> bool:
        """Whether the request may have taken effect (it was sent to a node)."""
        return any(a.sent for a in self.tried)


class Unreachable(ConnectionFailure):
    """No connection could be made to any node: the request was never sent."""


class NoAnswer(ConnectionFailure):
    """The request was sent to the last URL in `tried`, and no whole answer came
    back (a timeout, a connection closed). It may have been applied, so it was
    not sent to another node."""
