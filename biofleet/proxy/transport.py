"""Moving bytes: headers in and out, ASGI replies, one upstream attempt.

:func:`forward_once` sends one request to one upstream and, if the upstream
answered with something worth passing on, hands it to the client: an SSE
stream chunk by chunk as it arrives (``aiter_raw``: no decoding, no
buffering), any other answer once its body is complete (up to
``BUFFER_LIMIT``), so a body that breaks off never reaches the client as a
whole one. It reports whether the caller may still try elsewhere (nothing has
reached the client) or the exchange is over.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client import Gauge

from biofleet.proxy.discovery import Backend
from biofleet.proxy.metrics import ProxyMetrics
from biofleet.proxy.upstream import (
    ConnectFailed,
    ReplicaEjected,
    UpstreamBroken,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

log = logging.getLogger("biofleet.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 connection-specific fields, plus what the proxy sets itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
_DROP_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"authorization", b"x-request-id", b"expect"}
# date/server: the ASGI server in front adds its own; passing the upstream's would duplicate them.
_DROP_RESPONSE = HOP_BY_HOP | {b"date", b"server"}
# Upstream statuses that mean "this replica cannot take it now" (vLLM: engine dead / overloaded;
# 502: a gateway in front of the engine lost it). Nothing reaches the client; another replica is
# tried, and when none is left the proxy answers with its own 502/503.
RETRYABLE_STATUS = frozenset({502, 503})
# A replica's own failure (500: the engine raised; 504: a gateway in front of it gave up): tried
# on another replica when there is one and the retry budget allows; else passed on as answered.
RETRY_IF_POSSIBLE = frozenset({500, 504})
# A non-streaming answer is read whole before the client gets it, up to this size (memory per request).
BUFFER_LIMIT = 4 << 20
_SECRET_WORDS = ("key", "token", "authorization", "secret", "password", "cookie")


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    for k, v in headers:
        if k == b"x-request-id" and v and len(v) <= 200:
            return v
    return uuid.uuid4().hex.encode()


def upstream_request_headers(headers: RawHeaders, rid: bytes, api_key: str | None) -> RawHeaders:
    """Client headers minus hop-by-hop and credentials; the backend key, if any, instead."""
    drop = set(_DROP_REQUEST)
    for k, v in headers:
        if k == b"connection":  # fields the client named as connection-specific
            drop.update(t.strip().lower() for t in v.split(b","))
    out = [(k, v) for k, v in headers if k not in drop]
    if not any(k == b"accept-encoding" for k, _ in out):
        # httpx would otherwise ask for gzip, and the raw bytes we pass on would
        # reach a client that never said it could decode them.
        out.append((b"accept-encoding", b"identity"))
    out.append((b"x-request-id", rid))
    if api_key:
        out.append((b"authorization", b"Bearer " + api_key.encode()))
    return out


def downstream_headers(headers: RawHeaders, route: bytes, rid: bytes) -> RawHeaders:
    drop = set(_DROP_RESPONSE)
    for k, v in headers:
        if k.lower() == b"connection":
            drop.update(t.strip().lower() for t in v.split(b","))
    out = [(k.lower(), v) for k, v in headers if k.lower() not in drop]
    if not any(k == b"x-request-id" for k, _ in out):
        out.append((b"x-request-id", rid))
    out.append((b"x-biofleet-route", route))
    return out


def redact_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> list[tuple[str, str]]:
    """Headers safe to log: any value of a field named like a key/token/authorization is hidden."""
    out = []
    for k, v in headers:
        ks = k.decode("latin-1") if isinstance(k, bytes) else k
        vs = v.decode("latin-1") if isinstance(v, bytes) else v
        if any(w in ks.lower() for w in _SECRET_WORDS):
            vs = "<redacted>"
        out.append((ks, vs))
    return out


def error_body(status: int, message: str, code: str | int | None = None, type_: str | None = None) -> bytes:
    t = type_ or {
        400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error",
        429: "rate_limit_error", 431: "invalid_request_error", 503: "service_unavailable", 504: "timeout",
    }.get(status, "server_error")
    return json.dumps({"error": {"message": message, "type": t, "param": None,
                                 "code": code if code is not None else status}}).encode()


async def send_json(send: Send, status: int, body: bytes, extra: RawHeaders | None = None) -> None:
    headers: RawHeaders = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, status: int, message: str, code: str | int | None = None,
                     extra: RawHeaders | None = None) -> None:
    await send_json(send, status, error_body(status, message, code), extra)


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    event = {"error": {"message": message, "type": "server_error", "code": code}}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class Outcome(enum.Enum):
    DONE = "done"  # the client got an answer (maybe an error); stop
    RETRY = "retry"  # nothing reached the client; another upstream may be tried


@dataclass
class Attempt:
    """One upstream try for one request."""

    backend: Backend
    url: str
    body: bytes
    headers: RawHeaders
    model: str  # served (or cloud) model name, for metrics and the route header
    rid: bytes
    started: float  # perf_counter at request arrival
    stream: bool = False  # the client asked for SSE: the first event, not the headers, is the first byte
    first_byte_timeout: float = 600.0
    idle_timeout: float = 60.0
    may_retry: bool = False  # another replica could take it: a 500/504 or a timeout is not passed on


@dataclass
class AttemptResult:
    outcome: Outcome
    status: int = 0  # DONE: what the client got; RETRY: 502 broken, 502/503/500/504 as answered, 504 timeout
    reason: str = ""
    failed: bool = False  # the replica failed (5xx, timeout, broken): counts toward its ejection


class StreamedResponse(Protocol):
    """An upstream answer whose headers are in and whose body streams after: UpstreamResponse or
    _HttpxResponse."""

    status: int
    headers: RawHeaders

    def header(self, name: bytes) -> bytes: ...
    def aiter_raw(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class _HttpxResponse:
    """An httpx streaming response seen through the same small interface as UpstreamResponse."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = resp.headers.raw

    def header(self, name: bytes) -> bytes:
        return self._resp.headers.get(name.decode(), "").encode()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc)) from None
        except httpx.HTTPError as exc:
            raise UpstreamBroken(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._resp.aclose()


async def _open(upstream: UpstreamPool | None, client: httpx.AsyncClient, a: Attempt) -> StreamedResponse:
    """Send the request; the response once its headers are in. Raises the upstream.* errors."""
    first = a.first_byte_timeout
    if upstream is not None and a.url.startswith("http://"):
        return await upstream.request(a.url, a.headers, a.body, first_byte_timeout=first,
                                      idle_timeout=a.idle_timeout, first_chunk=a.stream)
    # https (cloud fallbacks): httpx does TLS for us; its read timeout is per read, not a deadline
    read = max(first, a.idle_timeout)
    req = client.build_request("POST", a.url, content=a.body, headers=a.headers,
                               timeout=httpx.Timeout(read, connect=client.timeout.connect))
    try:
        return _HttpxResponse(await client.send(req, stream=True))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
    except httpx.PoolTimeout as exc:
        raise UpstreamBroken("connection pool exhausted") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(str(exc)) from None
    except httpx.HTTPError as exc:
        raise UpstreamBroken(f"{type(exc).__name__}: {exc}") from None


def _timeout_text(a: Attempt) -> str:
    if a.stream:
        return f"no first event within {a.first_byte_timeout:g} s"
    return f"no answer within {a.first_byte_timeout:g} s"


async def _not_answered(exc: UpstreamError, a: Attempt, send: Send, metrics: ProxyMetrics,
                        stalled_after: int | None = None) -> AttemptResult:
    """An attempt that failed before anything reached the client: retry it, or answer now.
    ``stalled_after``: the body bytes that had come when it stalled (None: before the headers)."""
    b = a.backend
    if isinstance(exc, ReplicaEjected):
        return AttemptResult(Outcome.RETRY, 503, f"{b.key}: ejected while waiting")
    if isinstance(exc, UpstreamTimeout):
        what = (_timeout_text(a) if stalled_after is None
                else f"answer stalled for {a.idle_timeout:g} s after {stalled_after} bytes")
        if a.may_retry:
            return AttemptResult(Outcome.RETRY, 504, f"{b.key}: {what}", failed=True)
        metrics.errors.labels(a.model, "timeout").inc()
        await send_error(send, 504, f"upstream {b.key}: {what}", "upstream_timeout")
        return AttemptResult(Outcome.DONE, 504, f"{b.key}: {what}", failed=True)
    # e.g. the server closed the connection before answering: nothing reached the client yet
    return AttemptResult(Outcome.RETRY, 502, f"{b.key}: {type(exc).__name__}", failed=True)


async def forward_once(client: httpx.AsyncClient, a: Attempt, send: Send, metrics: ProxyMetrics,
                       inflight_gauge: Gauge, upstream: UpstreamPool | None = None) -> AttemptResult:
    b = a.backend
    b.inflight += 1
    inflight_gauge.inc()
    try:
        try:
            resp = await _open(upstream, client, a)
        except ConnectFailed as exc:
            # Nothing was sent: the replica is gone or not listening. Eject it now
            # (passive check); the active probe re-admits it when it answers again.
            b.mark_down(f"connect failed: {exc}")
            return AttemptResult(Outcome.RETRY, reason=f"{b.key}: connect failed")
        except UpstreamError as exc:
            return await _not_answered(exc, a, send, metrics)

        try:
            status = resp.status
            if status in RETRYABLE_STATUS or (status in RETRY_IF_POSSIBLE and a.may_retry):
                return AttemptResult(Outcome.RETRY, status, f"{b.key}: answered {status}", failed=True)
            headers = downstream_headers(resp.headers, f"{a.model}@{b.key}".encode(), a.rid)
            if resp.header(b"content-type").startswith(b"text/event-stream"):
                res = await _relay_stream(resp, a, headers, send, metrics)
            else:
                res = await _relay_whole(resp, a, headers, send, metrics)
            if res.outcome is Outcome.DONE and status >= 500:
                res.failed = True
            return res
        finally:
            await resp.aclose()
    finally:
        b.inflight -= 1
        inflight_gauge.dec()


async def _relay_stream(resp: StreamedResponse, a: Attempt, headers: RawHeaders, send: Send,
                        metrics: ProxyMetrics) -> AttemptResult:
    """SSE: every chunk to the client as it arrives; a break becomes an in-band error event.
    The status line goes out with the first event, so a replica that breaks or stalls before it
    is retried elsewhere like one that never answered."""
    b = a.backend
    chunks = resp.aiter_raw()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = b""
    except UpstreamError as exc:
        return await _not_answered(exc, a, send, metrics)
    b.last_progress = time.monotonic()
    metrics.first_byte(a.model, b.key, time.perf_counter() - a.started)
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})
    try:
        async for chunk in chunks:
            b.last_progress = time.monotonic()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        # Bytes already reached the client: never retry. Tell it in-band.
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_broken"
        metrics.errors.labels(a.model, kind).inc()
        log.warning("stream from %s broke: %s", b.key, type(exc).__name__)
        msg = (f"upstream sent nothing for {a.idle_timeout:g} s" if kind == "timeout"
               else "upstream connection broke")
        await send({"type": "http.response.body", "body": sse_error(msg, kind), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return AttemptResult(Outcome.DONE, resp.status, kind, failed=True)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return _done(a, resp.status, metrics)


async def _relay_whole(resp: StreamedResponse, a: Attempt, headers: RawHeaders, send: Send,
                       metrics: ProxyMetrics) -> AttemptResult:
    """Not a stream: the whole body is read before the client gets the status line, so a body
    that breaks off is retried elsewhere (or answered 502) instead of reaching the client as a
    truncated 200. Past BUFFER_LIMIT the body is passed on as it comes; a break after that cuts
    the client's connection, so its HTTP client sees an incomplete response, never a short one."""
    b = a.backend
    parts: list[bytes] = []
    size = 0
    passing = False  # the status line went out: past the limit, chunks go on as they come
    try:
        async for chunk in resp.aiter_raw():
            size += len(chunk)
            if passing:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                continue
            if not parts:
                metrics.first_byte(a.model, b.key, time.perf_counter() - a.started)
            parts.append(chunk)
            if size > BUFFER_LIMIT:
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                parts = []
                passing = True
    except UpstreamError as exc:
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_broken"
        log.warning("answer from %s broke off after %d bytes: %s", b.key, size, type(exc).__name__)
        if passing:
            # Returning without the final body message makes the ASGI server drop the connection.
            metrics.errors.labels(a.model, kind).inc()
            return AttemptResult(Outcome.DONE, resp.status, kind, failed=True)
        if isinstance(exc, UpstreamTimeout):
            return await _not_answered(exc, a, send, metrics, stalled_after=size)
        return AttemptResult(Outcome.RETRY, 502, f"{b.key}: answer broke off ({type(exc).__name__})", failed=True)
    b.last_progress = time.monotonic()
    if passing:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        out = [(k, v) for k, v in headers if k != b"content-length"]
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    return _done(a, resp.status, metrics)


def _done(a: Attempt, status: int, metrics: ProxyMetrics) -> AttemptResult:
    metrics.answered(a.model, a.backend.key, status, time.perf_counter() - a.started)
    return AttemptResult(Outcome.DONE, status)


async def call_json(client: httpx.AsyncClient, url: str, payload: dict[str, Any], headers: RawHeaders,
                    timeout: float) -> dict[str, Any]:
    """A small internal request (intent/safety classifiers); raises on any failure."""
    r = await client.post(url, content=json.dumps(payload).encode(), headers=headers, timeout=timeout)
    r.raise_for_status()
    data = r.json()
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data
