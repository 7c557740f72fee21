"""What the sync and asyncio clients share: the requests, the decoding of
answers and errors, and the rule of when to try the next node."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import quote

import httpx

from . import errors
from . import types as t

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

DEFAULT_TIMEOUT = 10.0
"""Seconds a request may take by default (longer than the nodes' default ``causal_wait`` of 5 s)."""

JSON_HEADERS = {"Content-Type": "application/json"}

# Failures that happen before a byte of the request leaves: no connection could
# be made (refused, no route, connect timeout) or none was free in the pool.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, whichever node it goes to, and how to read its answer."""

    method: str
    path: str
    decode: Callable[[Any, str], T]
    params: Mapping[str, str] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def request(self, http: httpx.Client | httpx.AsyncClient, url: str) -> httpx.Request:
        """The request to the node at `url`, with `http`'s token and timeout."""
        return http.build_request(self.method, url + self.path, params=self.params, content=self.body, headers=self.headers)

    def answer(self, url: str, response: httpx.Response) -> T:
        """The decoded answer of the node at `url`, or its error raised."""
        status = response.status_code
        content = response.content
        if 200 <= status < 300:
            try:
                return self.decode(json.loads(content), url)
            except (ValueError, TypeError, KeyError) as exc:
                raise errors.BadAnswer(url, status, "bad_answer", f"unexpected answer: {exc}") from None
        raise refusal(url, status, content)


def refusal(url: str, status: int, content: bytes) -> errors.ServerError:
    """The error of a non-2xx answer: the node's ``{"error":{...}}`` body, or
    (from anything else, a proxy say) its text under the code ``http_<status>``."""
    try:
        body = json.loads(content)["error"]
        code, message = str(body["code"]), str(body["message"])
        missing = tuple(_missing(m) for m in body.get("missing", ()))
    except (ValueError, TypeError, KeyError):
        code = f"http_{status}"
        message = content.decode("utf-8", "replace").strip()
        missing = ()
    return errors.ERRORS.get(code, errors.ServerError)(url, status, code, message, missing)


class Failover:
    """The attempts of one call: iterate for each node's URL and request. A
    request goes to the next node only when it was never sent; one that may
    have reached a node is never sent again."""

    def __init__(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], urls: Sequence[str]) -> None:
        self.http = http
        self.call = call
        self.urls = urls
        self.tried: list[errors.Attempt] = []

    def __iter__(self) -> Iterator[tuple[str, httpx.Request]]:
        return ((url, self.call.request(self.http, url)) for url in self.urls)

    def failed(self, url: str, exc: httpx.RequestError) -> None:
        """Records the failure at `url`; raises `NoAnswer` when the request went out."""
        sent = not isinstance(exc, NEVER_SENT)
        self.tried.append(errors.Attempt(url, _describe(exc), sent))
        if sent:
            raise errors.NoAnswer("no answer (the request may have been applied)", tuple(self.tried)) from exc

    def exhausted(self) -> errors.Unreachable:
        """The error once every node was tried without sending the request."""
        return errors.Unreachable("no node reachable", tuple(self.tried))


def _describe(exc: httpx.RequestError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class Nodes(Generic[H]):
    """What `Client` and `AsyncClient` share: the nodes, and one httpx client
    (a pool of kept-alive connections) with the token and the timeout."""

    def __init__(
        self, nodes: Sequence[str] | str, token: str | None = None, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT
    ) -> None:
        """`nodes`: base URLs (``http://127.0.0.1:5001``), or one comma-separated
        string of them, tried in order. `token`: the nodes' ``client_token``,
        sent as a bearer token. `timeout`: seconds per request; longer than the
        nodes' ``causal_wait``, so that a node's wait for a context ends first."""
        self.nodes = normalize_nodes(nodes)
        self._http: H = self._connect(client_options(token, timeout))

    def _connect(self, options: dict[str, Any]) -> H:
        raise NotImplementedError

    def _failover(self, call: Call[T], node: str | None) -> Failover:
        """The attempts of `call`: at `node` only, or at each node in turn."""
        return Failover(self._http, call, normalize_nodes([node]) if node else self.nodes)


# ---- requests ---------------------------------------------------------------


def normalize_nodes(nodes: Sequence[str] | str) -> tuple[str, ...]:
    """Base URLs without their trailing slash; at least one, each http(s)."""
    if isinstance(nodes, str):
        nodes = [n for n in nodes.split(",") if n.strip()]
    urls = tuple(n.strip().rstrip("/") for n in nodes)
    if not urls:
        raise errors.InvalidValue("no node URL given")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise errors.InvalidValue(f"node URL {url!r} must start with http:// or https://")
    return urls


def encode_json(value: Any) -> bytes:
    """Compact JSON of `value`; NaN and infinities are not JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise errors.InvalidValue(f"not a JSON value: {exc}") from None


def check_clock(clock: Mapping[str, int] | None) -> t.Clock | None:
    """A context as sent: a copy, entries checked."""
    if clock is None:
        return None
    for node, seq in clock.items():
        if not isinstance(node, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise errors.InvalidValue(f"a clock maps node ids to counters >= 0, not {node!r}: {seq!r}")
    return dict(clock)


def _key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise errors.InvalidValue("a key is a non-empty string")
    return key


def _kv_path(key: str) -> str:
    return "/v1/kv/" + quote(_key(key), safe="/")


def get(key: str, context: Mapping[str, int] | None) -> Call[t.GetResult]:
    ctx = check_clock(context)
    params = {"context": encode_json(ctx).decode()} if ctx else None
    return Call("GET", _kv_path(key), _get_result, params=params)


def snapshot(keys: Sequence[str], context: Mapping[str, int] | None) -> Call[t.Snapshot]:
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise errors.InvalidValue("keys is a list of non-empty strings")
    body: dict[str, Any] = {"keys": list(keys)}
    ctx = check_clock(context)
    if ctx is not None:
        body["context"] = ctx
    return Call("POST", "/v1/txn/read", _snapshot, body=encode_json(body), headers=JSON_HEADERS)


def put(key: str, value: Any, context: Mapping[str, int] | None) -> Call[t.WriteResult]:
    body: dict[str, Any] = {"value": value}
    ctx = check_clock(context)
    if ctx is not None:
        body["context"] = ctx
    return Call("PUT", _kv_path(key), _write_result, body=encode_json(body), headers=JSON_HEADERS)


def txn_write(
    writes: Mapping[str, Any], deletes: Sequence[str], context: Mapping[str, int] | None
) -> Call[t.WriteResult]:
    """One atomic transaction: a put of each value of `writes` to its key (a
    ``None`` value puts JSON null), then a delete of each key of `deletes`, in
    that order. What the node checks (no writes, a key listed twice, the
    limits) is left to the node."""
    if not isinstance(writes, Mapping):
        raise errors.InvalidValue("writes maps keys to the values to put")
    if isinstance(deletes, str):
        raise errors.InvalidValue("deletes is a list of keys, not one string")
    listed: list[dict[str, Any]] = [{"key": _key(k), "op": {"put": v}} for k, v in writes.items()]
    listed += [{"key": _key(k), "op": "delete"} for k in deletes]
    body: dict[str, Any] = {"writes": listed}
    ctx = check_clock(context)
    if ctx is not None:
        body["context"] = ctx
    return Call("POST", "/v1/txn/write", _write_result, body=encode_json(body), headers=JSON_HEADERS)


def delete(key: str, context: Mapping[str, int] | None) -> Call[t.WriteResult]:
    ctx = check_clock(context)
    body = encode_json({"context": ctx}) if ctx is not None else None
    return Call("DELETE", _kv_path(key), _write_result, body=body, headers=JSON_HEADERS if body else {})


def status() -> Call[t.Status]:
    return Call("GET", "/status", _status)


def links(secret: str | None) -> Call[t.Links]:
    return Call("GET", "/admin/v1/links", _links, headers=_bearer(secret))


def set_link(peer: str, pause: bool, secret: str | None) -> Call[t.Links]:
    # The hook takes an empty JSON object, sent as JSON, and nothing else.
    action = "pause" if pause else "resume"
    headers = {**JSON_HEADERS, **_bearer(secret)}
    return Call("POST", f"/admin/v1/links/{quote(peer, safe='')}/{action}", _links, body=b"{}", headers=headers)


def _bearer(secret: str | None) -> dict[str, str]:
    """The fault hook's header: the cluster secret, in place of the client token."""
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


def client_options(token: str | None, timeout: float | httpx.Timeout) -> dict[str, Any]:
    """The options of the httpx client (sync or async) under a `Client`."""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if isinstance(timeout, (int, float)) and (math.isnan(timeout) or timeout <= 0):
        raise errors.InvalidValue(f"timeout must be a positive number of seconds, not {timeout!r}")
    return {"headers": headers, "timeout": timeout, "follow_redirects": False}


# ---- answers ----------------------------------------------------------------


def _clock(raw: Any) -> t.Clock:
    if not isinstance(raw, dict):
        raise TypeError(f"a clock is an object, not {raw!r}")
    return {str(node): int(seq) for node, seq in raw.items()}


def _dot(raw: Any) -> t.Dot:
    return t.Dot(str(raw["origin"]), int(raw["seq"]))


def _missing(raw: Any) -> t.Missing:
    return t.Missing(str(raw["node"]), int(raw["have"]), int(raw["want"]))


def _get_result(raw: Any, url: str) -> t.GetResult:
    return t.GetResult(
        key=str(raw["key"]),
        found=bool(raw["found"]),
        value=raw["value"],
        siblings=tuple(
            t.Sibling(_dot(s["dot"]), _clock(s["timestamp"]), bool(s["deleted"]), s["value"]) for s in raw["siblings"]
        ),
        context=_clock(raw["context"]),
        node=url,
    )


def _snapshot(raw: Any, url: str) -> t.Snapshot:
    return t.Snapshot(tuple(_get_result(r, url) for r in raw["reads"]), _clock(raw["context"]), url)


def _write_result(raw: Any, url: str) -> t.WriteResult:
    return t.WriteResult(_dot(raw["dot"]), _clock(raw["timestamp"]), url)


def _status(raw: Any, url: str) -> t.Status:
    return t.Status(
        node=str(raw["node"]),
        applied=_clock(raw["applied"]),
        stable=_clock(raw["stable"]),
        buffered_total=int(raw["buffered_total"]),
        buffered_events=tuple(
            t.BufferedEvent(_dot(e["dot"]), str(e["key"]), tuple(_missing(m) for m in e["waiting_for"]))
            for e in raw["buffered_events"]
        ),
        log_len=int(raw["log_len"]),
        peers=tuple(
            t.PeerStatus(
                node=str(p["node"]),
                url=str(p["url"]),
                acked=_clock(p["acked"]),
                lag=int(p["lag"]),
                paused=bool(p["paused"]),
                reachable=bool(p["reachable"]),
                last_error=p.get("last_error"),
            )
            for p in raw["peers"]
        ),
        url=url,
        raw=dict(raw),
    )


def _links(raw: Any, url: str) -> t.Links:
    return t.Links(str(raw["node"]), tuple(str(p) for p in raw["paused"]))
