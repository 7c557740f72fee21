"""Python client of causal-kv, the causally consistent key-value store.

>>> from causal_kv import Client
>>> with Client(["http://127.0.0.1:5001", "http://127.0.0.1:5002"]) as client:
...     session = client.session()
...     session.put("greeting", {"text": "hello"})
...     session.get("greeting").value

`Client` and `AsyncClient` speak the native API (``/v1/kv/{key}``); sessions
(`Session`, `AsyncSession`) carry the causal context across requests and
nodes; every failure is a `CausalKVError` (see `causal_kv.errors`).
"""

from .aio import AsyncClient, AsyncSession
from .client import Client, Session
from .errors import (
    Attempt,
    BadAnswer,
    BadRequest,
    BufferFull,
    CausalKVError,
    CausalTimeout,
    Conflict,
    ConnectionFailure,
    Internal,
    InvalidValue,
    NoAnswer,
    NotFound,
    Recovering,
    RequestTimeout,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownHistory,
    UnknownNode,
    Unreachable,
    UnsupportedMediaType,
)
from .session_file import kvctl_session_path, load_context, merge_into
from .types import (
    BufferedEvent,
    Clock,
    Dot,
    GetResult,
    Links,
    Missing,
    PeerStatus,
    Sibling,
    Snapshot,
    Status,
    WriteResult,
    covers,
    merge,
)

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Attempt",
    "BadAnswer",
    "BadRequest",
    "BufferFull",
    "BufferedEvent",
    "CausalKVError",
    "CausalTimeout",
    "Conflict",
    "Client",
    "Clock",
    "ConnectionFailure",
    "Dot",
    "GetResult",
    "Internal",
    "InvalidValue",
    "Links",
    "Missing",
    "NoAnswer",
    "NotFound",
    "PeerStatus",
    "Recovering",
    "RequestTimeout",
    "ServerError",
    "Session",
    "Sibling",
    "Snapshot",
    "Status",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownHistory",
    "UnknownNode",
    "Unreachable",
    "UnsupportedMediaType",
    "WriteResult",
    "covers",
    "kvctl_session_path",
    "load_context",
    "merge",
    "merge_into",
]
