"""Upstream failures the proxy must turn into a bounded, honest answer: a real proxy in
front of real misbehaving HTTP servers on loopback (uvicorn apps, or a hand-written
HTTP/1.1 server where uvicorn would never misbehave that way)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import httpx
import pytest
from proxy_helpers import (
    RawServer,
    chat_reply,
    keep,
    mock,
    proxy,
    proxy_config,
    send_bytes,
    settled,
    upstream,
    wait_until,
)

CHAT = {"model": "coder", "messages": [{"role": "user", "content": "hello"}]}


def metric(p, line: str) -> bool:
    return line in httpx.get(p.url + "/metrics").text


def assert_openai_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"], err


# -- 502 from an upstream ------------------------------------------------------------------


def test_upstream_502_is_retried_on_another_replica(stack):
    async def bad_gateway(path, headers, body, send):
        await send_bytes(send, 502, b'{"error":{"message":"bad gateway"}}')

    bad, rec = upstream(bad_gateway)
    keep(stack, bad)
    good = keep(stack, mock("coder"))
    # round-robin from the first listed replica: the first request meets the 502 first
    p, app = proxy(stack, proxy_config({"bad": (bad.url, "coder"), "good": (good.url, "coder")},
                                       strategy="round-robin"))
    with httpx.Client(base_url=p.url) as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@good", r.text
    assert rec.requests, "the 502 replica was never tried"
    assert metric(p, f'biofleet_proxy_retries_total{{model="coder"}} {float(len(rec.requests))}')
    settled(app)


def test_502_from_every_replica_is_a_502_error(stack):
    async def bad_gateway(path, headers, body, send):
        await send_bytes(send, 502, b"<html>bad gateway</html>", b"text/html")

    bad, rec = upstream(bad_gateway)
    keep(stack, bad)
    p, app = proxy(stack, proxy_config({"bad": (bad.url, "coder")}))
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
    assert_openai_error(r, 502, "upstream_broken")
    assert "answered 502" in r.json()["error"]["message"] and len(rec.requests) == 1
    settled(app)


# -- a stream that stalls ------------------------------------------------------------------


def test_stream_that_stalls_midway_ends_with_sse_error_after_the_timeout(stack):
    gate = threading.Event()

    async def stalls(path, headers, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(2):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
        await asyncio.to_thread(gate.wait, 30)  # silent, connection open
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    us, rec = upstream(stalls)
    keep(stack, us)
    stack.callback(gate.set)
    p, app = proxy(stack, proxy_config({"u": (us.url, "coder")}, idle_timeout_s=0.5))
    events = []
    # the client's own timeout is only a guard: the proxy must end the stream well before it
    with httpx.Client(timeout=15) as c, c.stream("POST", p.url + "/v1/chat/completions",
                                                 json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                events.append(line)
    assert not gate.is_set()  # the stream ended while the upstream was still silent
    assert events[:2] == ["data: 0", "data: 1"] and len(events) == 3, events
    err = json.loads(events[2][len("data: "):])["error"]
    assert err["code"] == "timeout" and "nothing for 0.5 s" in err["message"]
    settled(app)
    # the upstream connection was closed, not kept: the backend sees its client leave
    assert rec.disconnected.wait(5), "the stalled upstream connection was not released"
    assert p.call(lambda: sum(len(v) for v in app.state.upstream._idle.values())) == 0
    assert metric(p, 'biofleet_proxy_errors_total{kind="timeout",model="coder"} 1.0')


# -- a non-streaming body that breaks ---------------------------------------------------------


async def _short_content_length(req, writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n"
                 b'{"id":"x","object":"chat.completion","choi')
    await writer.drain()
    return False  # and close


async def _broken_chunked(req, writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"14\r\n{\"id\":\"x\",\"object\":\"\r\n")
    await writer.drain()
    return False  # no more chunks, no terminating chunk


async def _chunk_cut_short(req, writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"40\r\n{\"id\":\"x\",\"object\"")
    await writer.drain()
    return False  # a chunk announced 64 bytes, gave 18


BREAKS = {"short-content-length": _short_content_length, "chunked-no-last-chunk": _broken_chunked,
          "chunk-cut-short": _chunk_cut_short}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_non_streaming_body_that_breaks_is_a_502_not_a_truncated_200(stack, how):
    broken = keep(stack, RawServer(BREAKS[how]).start())
    p, app = proxy(stack, proxy_config({"b": (broken.url, "coder")}))
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
    assert_openai_error(r, 502, "upstream_broken")
    assert len(broken.requests) == 1
    settled(app)
    assert metric(p, 'biofleet_proxy_errors_total{kind="upstream_broken",model="coder"} 1.0')


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_non_streaming_body_that_breaks_is_retried_on_another_replica(stack, how):
    broken = keep(stack, RawServer(BREAKS[how]).start())
    good = keep(stack, mock("coder"))
    p, app = proxy(stack, proxy_config({"b": (broken.url, "coder"), "g": (good.url, "coder")},
                                       strategy="round-robin"))
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)  # round-robin: the broken one first
    assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@g", r.text
    assert r.json()["choices"][0]["message"]["content"]  # the whole body of the good replica
    assert len(broken.requests) == 1 and good.app.state.engine.requests_total == 1
    assert p.call(lambda: app.state.pool.backends["b"].healthy)  # a broken answer is not a dead server
    settled(app)


def test_non_streaming_body_that_stalls_is_a_504(stack):
    async def stalls(req, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"14\r\n{\"id\":\"x\",\"object\":\"\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # silent, connection open
        return False

    slow = keep(stack, RawServer(stalls).start())
    p, app = proxy(stack, proxy_config({"s": (slow.url, "coder")}, idle_timeout_s=0.5))
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=15)
    assert_openai_error(r, 504, "upstream_timeout")
    settled(app)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_non_streaming_body_that_breaks_cuts_the_client_connection(stack, framing):
    """Past the buffering limit the body is passed on as it comes; if it then breaks, the
    client's connection is cut (its HTTP client raises), never ended as if complete."""
    from biofleet.proxy.transport import BUFFER_LIMIT

    big = BUFFER_LIMIT + 65536

    async def big_then_break(req, writer):
        if framing == "content-length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % (big + 10) + b"x" * big)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n" % (big, b"x" * big))
        await writer.drain()
        return False

    broken = keep(stack, RawServer(big_then_break).start())
    p, app = proxy(stack, proxy_config({"b": (broken.url, "coder")}))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=15)
    assert len(broken.requests) == 1
    settled(app)


# -- a kept-alive connection the backend closed ------------------------------------------------


def _rst(writer) -> None:
    """Close with a TCP reset instead of a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _misbehaves_on_reuse(how: str):
    """A RawServer handler answering normally until ``armed`` is set, then meeting the next
    request on a kept-alive connection with ``how``: "fin" / "rst" close without a byte
    (FIN or TCP reset), "partial" writes part of a status line first."""
    armed = threading.Event()

    async def handler(req, writer):
        if armed.is_set() and req["nth"] > 0:
            armed.clear()
            if how == "rst":
                _rst(writer)
            elif how == "partial":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-ty")
                await writer.drain()
            return False
        writer.write(chat_reply())
        return True

    return handler, armed


def _second_post(stack, how: str):
    """Two POSTs through a proxy; the backend misbehaves on the second, which the proxy
    sends on the connection the first one left in its pool."""
    handler, armed = _misbehaves_on_reuse(how)
    backend = keep(stack, RawServer(handler).start())
    p, app = proxy(stack, proxy_config({"b": (backend.url, "coder")}))
    with httpx.Client(base_url=p.url) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        armed.set()
        r = c.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "again"})
    settled(app)
    return backend, r


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_post_on_a_kept_alive_connection_the_backend_dropped_is_resent_once(stack, close):
    """The backend drops its kept-alive connection as the proxy's next POST arrives on it
    (idle timeout racing the request): no response byte came back, so nothing was
    processed, and the proxy sends the request once more on a fresh connection."""
    backend, r = _second_post(stack, close)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok", r.text
    assert len(backend.requests) == 3
    dropped, resent = backend.requests[1], backend.requests[2]
    assert dropped["nth"] == 1 and resent["nth"] == 0  # the same request, re-sent on a new connection
    assert dropped["body"] == resent["body"]
    assert dropped["headers"]["x-request-id"] == "again" == resent["headers"]["x-request-id"]


def test_post_is_not_resent_once_the_backend_started_answering(stack):
    """The backend wrote part of its answer on a kept-alive connection, then closed: it had
    the request, so the proxy must not send it again on a fresh connection."""
    backend, r = _second_post(stack, "partial")
    assert_openai_error(r, 502, "upstream_broken")
    assert len(backend.requests) == 2


def test_post_after_the_backend_closed_an_idle_connection_succeeds(stack):
    """The backend's keep-alive timeout closes the pooled connection while it is idle: the
    next POST goes out on a fresh connection, once."""
    backend = keep(stack, RawServer(lambda req, w: _answer(w), idle_close_s=0.1).start())
    p, app = proxy(stack, proxy_config({"b": (backend.url, "coder")}, probe_interval_s=3600))
    with httpx.Client(base_url=p.url) as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            wait_until(lambda: p.call(lambda: _pooled_and_closed(app)), what="idle connection closed by the backend")
    assert len(backend.requests) == 3 and all(r["nth"] == 0 for r in backend.requests)
    settled(app)


def _pooled_and_closed(app) -> bool:
    """The proxy holds a kept-alive upstream connection and has seen the backend close it."""
    idle = [conn for conns in app.state.upstream._idle.values() for conn in conns]
    return bool(idle) and all(conn.closed for conn in idle)


async def _answer(writer) -> bool:
    writer.write(chat_reply())
    return True


# -- a stream that fails before its first event ------------------------------------------------


@pytest.mark.parametrize("how", ["closes", "stalls"])
def test_stream_that_fails_before_its_first_event_is_retried_on_another_replica(stack, how):
    gate = threading.Event()

    async def headers_only(path, headers, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if how == "stalls":
            await asyncio.to_thread(gate.wait, 30)
        raise RuntimeError("engine died before its first token")

    bad, rec = upstream(headers_only)
    keep(stack, bad)
    stack.callback(gate.set)  # before the server stops: its handler waits on the gate
    good = keep(stack, mock("coder"))
    p, app = proxy(stack, proxy_config({"bad": (bad.url, "coder"), "good": (good.url, "coder")},
                                       strategy="round-robin", stream_first_byte_timeout_s=0.5))
    # round-robin: the bad one first. Its status line reached nobody: the client sees the good stream only
    r = httpx.post(p.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=15)
    assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@good", r.text
    assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    assert len(rec.requests) == 1
    settled(app)
