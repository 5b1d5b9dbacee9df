"""The proxy's lean upstream client against real servers on loopback: framing, reuse, failures."""

from __future__ import annotations

import asyncio
import socket

import pytest

from biofleet.proxy import upstream as U


async def _serve(handler):
    """A raw TCP server on loopback; ``handler(reader, writer)`` plays the upstream."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def _read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["httptools", "h11"])
def parser(request, monkeypatch):
    if request.param == "h11":
        monkeypatch.setattr(U, "httptools", None)
    elif U.httptools is None:
        pytest.fail("httptools is not installed (pip install biofleet[fast])")
    return request.param


def test_content_length_and_keep_alive_reuse(parser):
    async def main():
        conns = []

        async def handler(reader, writer):
            conns.append(writer)
            while True:
                try:
                    req = await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                assert b"x-test: 1" in req and req.endswith(b'{"a":1}')
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"b\":2}")
                await writer.drain()

        server, url = await _serve(handler)
        pool = U.UpstreamPool(connect_timeout=2, read_timeout=5)
        for _ in range(3):
            r = await pool.request(url, [(b"x-test", b"1")], b'{"a":1}')
            assert r.status == 200 and r.header(b"content-type") == b"application/json"
            assert b"".join([c async for c in r.aiter_raw()]) == b'{"b":2}'
            await r.aclose()
        assert len(conns) == 1  # one connection, reused
        await pool.aclose()
        server.close()

    run(main())


def test_chunked_stream_arrives_chunk_by_chunk(parser):
    async def main():
        step = asyncio.Event()

        async def handler(reader, writer):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(3):
                data = f"data: {i}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                await step.wait()  # the next chunk only after the client has seen this one
                step.clear()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        server, url = await _serve(handler)
        pool = U.UpstreamPool(connect_timeout=2, read_timeout=5)
        r = await pool.request(url, [], b"{}")
        got = []
        async for chunk in r.aiter_raw():
            got.append(chunk)
            step.set()
        assert got == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        await r.aclose()
        await pool.aclose()
        server.close()

    run(main())


def test_close_delimited_and_mid_body_break(parser):
    async def main():
        async def broken(reader, writer):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-part")
            await writer.drain()
            writer.close()

        server, url = await _serve(broken)
        pool = U.UpstreamPool(connect_timeout=2, read_timeout=5)
        r = await pool.request(url, [], b"{}")
        with pytest.raises(U.UpstreamBroken):
            async for _ in r.aiter_raw():
                pass
        await r.aclose()
        server.close()

        async def close_delimited(reader, writer):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of ")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"the body")
            await writer.drain()
            writer.close()

        server, url = await _serve(close_delimited)
        r = await pool.request(url, [], b"{}")
        assert b"".join([c async for c in r.aiter_raw()]) == b"all of the body"
        await r.aclose()
        await pool.aclose()
        server.close()

    run(main())


def test_refused_timeout_and_stale_connection(parser):
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()
        pool = U.UpstreamPool(connect_timeout=1, read_timeout=0.3)
        with pytest.raises(U.ConnectFailed):
            await pool.request(f"http://127.0.0.1:{dead}/x", [], b"")

        async def silent(reader, writer):
            await _read_request(reader)
            await asyncio.sleep(5)

        server, url = await _serve(silent)
        with pytest.raises(U.UpstreamTimeout):
            await pool.request(url, [], b"{}")
        server.close()

        served = []

        async def once_then_close(reader, writer):
            await _read_request(reader)
            served.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # the upstream drops the idle keep-alive connection

        server, url = await _serve(once_then_close)
        pool = U.UpstreamPool(connect_timeout=1, read_timeout=2)
        for _ in range(2):  # the second request finds the kept connection closed and retries on a new one
            r = await pool.request(url, [], b"{}")
            assert b"".join([c async for c in r.aiter_raw()]) == b"ok"
            await r.aclose()
            await asyncio.sleep(0.2)
        assert len(served) == 2
        await pool.aclose()
        server.close()

    run(main())
