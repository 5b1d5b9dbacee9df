"""A lean HTTP/1.1 client for the proxy's hot path: one request -> one upstream, streamed back.

Why not httpx here: under 64 concurrent connections httpx's pool spends most of the
proxy's CPU scanning its connections for every request. This client keeps a LIFO
list of idle keep-alive connections per upstream (O(1) to take and give back), is an
``asyncio.Protocol`` fed straight into httptools' C parser (h11 when httptools is not
installed), and hands body chunks to the caller as they arrive, so SSE streams pass
through unbuffered. It is used only for plain-http fleet backends; probes, classifier
calls and https cloud fallbacks stay on httpx.

Errors (all ``UpstreamError``):
    ConnectFailed   nothing was sent: the upstream refused or did not accept in time
    StaleConnection a kept-alive connection was closed by the upstream before answering
    UpstreamTimeout no answer within the first-byte timeout, or a gap longer than the idle timeout
    UpstreamBroken  the connection broke mid-response, or the response was not HTTP
    ReplicaEjected  the replica was taken out of rotation while this request waited for its first
                    byte (:meth:`UpstreamPool.abort_waiting`): nothing reached the client
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import h11
    from httptools import HttpResponseParser

# The fast C parser; optional (pip install biofleet[fast]). A module or None (tests set None to run h11).
httptools: ModuleType | None
try:
    import httptools
except ImportError:  # pragma: no cover - exercised where httptools is missing
    httptools = None

RawHeaders = list[tuple[bytes, bytes]]
_HIGH_WATER = 1 << 20  # pause reading an upstream whose client is slower than it, past 1 MiB


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    pass


class StaleConnection(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamBroken(UpstreamError):
    pass


class ReplicaEjected(UpstreamError):
    pass


class _Conn(asyncio.Protocol):
    """One TCP connection; one response at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: RawHeaders = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        # Exactly one of the two parses the response: httptools' C parser, or h11 where it is missing.
        self.parser: HttpResponseParser | None = None
        self.h11: h11.Connection | None = None
        if httptools is not None:
            self.parser = httptools.HttpResponseParser(self)
        else:
            import h11

            self.h11 = h11.Connection(h11.CLIENT)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # loop.create_connection always hands a stream protocol a stream transport (uvloop's is
        # not an asyncio.Transport subclass, so an isinstance check would refuse it).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            if self.parser is not None:
                self.parser.feed_data(data)
            else:
                self._feed_h11(data)
        except Exception as exc:  # httptools.HttpParserError, h11.RemoteProtocolError, upgrade...
            self.error = UpstreamBroken(f"invalid HTTP from upstream: {exc}")
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.error is None and self._close_delimited():
            # No Content-Length and not chunked: the body ends when the upstream closes (RFC 9112 §6.3).
            if self.parser is None:
                self._feed_h11(b"")
            self.complete = True
        if not self.complete and self.error is None:
            if not self.got_bytes and self.reused:
                self.error = StaleConnection("kept-alive connection closed by the upstream")
            elif not self.got_bytes:
                self.error = UpstreamBroken("upstream closed the connection without answering")
            else:
                self.error = UpstreamBroken("upstream closed the connection mid-response")
        self._wake()

    def _close_delimited(self) -> bool:
        names = {k.lower() for k, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is None:
            raise RuntimeError("on_headers_complete is httptools' callback, but this connection parses with h11")
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def on_message_complete(self) -> None:
        self.complete = True

    # -- h11 fallback ------------------------------------------------------------------------

    def _feed_h11(self, data: bytes) -> None:
        import h11

        conn = self.h11
        if conn is None:
            raise RuntimeError("_feed_h11 called on a connection that parses with httptools")
        conn.receive_data(data)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Response):
                self.status = ev.status_code
                self.headers = [(bytes(k), bytes(v)) for k, v in ev.headers.raw_items()]
                self.keep_alive = True
                self.headers_done = True
            elif isinstance(ev, h11.Data):
                self.on_body(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                self.complete = True
                self.keep_alive = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                return

    # -- waiting -----------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something new happened (headers, a chunk, the end, an error)."""
        loop = asyncio.get_running_loop()
        self.waiter = fut = loop.create_future()
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return data

    def can_reuse(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout("no answer from upstream within the timeout"))


class UpstreamResponse:
    def __init__(self, pool: UpstreamPool, conn: _Conn, idle_timeout: float, first_deadline: float | None) -> None:
        self._pool, self._conn, self._timeout = pool, conn, idle_timeout
        self._first_deadline = first_deadline  # loop.time() by which the first body chunk must come
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    def header(self, name: bytes) -> bytes:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return b""

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        c = self._conn
        deadline = self._first_deadline
        while True:
            if c.chunks:
                if deadline is not None:
                    deadline = None
                    self._pool._answered(c)
                yield c.take()
                continue
            if c.complete:
                return
            if c.error is not None:
                raise c.error
            if deadline is None:
                await c.wait(self._timeout)
            else:
                await c.wait(max(0.0, deadline - asyncio.get_running_loop().time()))

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._pool._answered(self._conn)
        self._pool._release(self._conn)


class UpstreamPool:
    """Keep-alive connections per (host, port), most recently used first."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_idle_per_host: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # the default first-byte and idle timeout of a request
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        # connections whose request has had no answer byte yet, per upstream (abort_waiting)
        self._waiting: dict[tuple[str, int], set[_Conn]] = {}

    def _answered(self, conn: _Conn) -> None:
        waiting = self._waiting.get(conn.key)
        if waiting is not None:
            waiting.discard(conn)

    def abort_waiting(self, url: str) -> int:
        """End every request to this upstream that has no answer byte yet with ReplicaEjected (the
        caller retries it elsewhere). Returns how many."""
        parts = urlsplit(url)
        waiting = self._waiting.pop((parts.hostname or "127.0.0.1", parts.port or 80), set())
        for conn in waiting:
            if conn.error is None:
                conn.error = ReplicaEjected("the replica was taken out of rotation while this request waited")
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            conn._wake()
        return len(waiting)

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(lambda: _Conn(key), key[0], key[1]),
                                             self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"{key[0]}:{key[1]}: {type(exc).__name__}: {exc}") from None
        return conn

    def _acquire_idle(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                conn._reset()
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.can_reuse():
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.closed = True
        if conn.transport is not None:
            conn.transport.close()

    async def request(self, url: str, headers: RawHeaders, body: bytes, method: bytes = b"POST", *,
                      first_byte_timeout: float | None = None, idle_timeout: float | None = None,
                      first_chunk: bool = False) -> UpstreamResponse:
        """Send one request; return once the response headers are in (the body streams after).

        The headers must come within ``first_byte_timeout`` (a deadline, however the bytes
        trickle in); with ``first_chunk`` the first body chunk too (a stream: its headers come at
        once, its first event only once the engine produced a token). After that, no gap between
        chunks may exceed ``idle_timeout``. Both default to the pool's ``read_timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.read_timeout if first_byte_timeout is None else first_byte_timeout)
        idle = self.read_timeout if idle_timeout is None else idle_timeout
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        key = (host, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [method, b" ", target.encode(), b" HTTP/1.1\r\nhost: ", parts.netloc.encode(),
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in headers:
            head += [k, b": ", v, b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = set()
        for attempt in (0, 1):
            conn = self._acquire_idle(key) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(key)
            transport = conn.transport
            if transport is None:  # pragma: no cover - create_connection calls connection_made before returning
                raise ConnectFailed(f"{key[0]}:{key[1]}: connected without a transport")
            if conn.h11 is not None:  # h11 tracks our side of the exchange too
                import h11

                conn.h11.send(h11.Request(method=method, target=target.encode(),
                                          headers=[(b"host", parts.netloc.encode()),
                                                   (b"content-length", str(len(body)).encode()), *headers]))
                conn.h11.send(h11.Data(data=body))
                conn.h11.send(h11.EndOfMessage())
            transport.write(payload)
            waiting.add(conn)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(max(0.0, deadline - loop.time()))
            except StaleConnection:
                waiting.discard(conn)
                transport.close()
                continue  # the upstream had closed it while idle: once more on a fresh connection
            except BaseException:
                waiting.discard(conn)
                conn.closed = True
                transport.close()
                raise
            if not first_chunk:
                waiting.discard(conn)
            return UpstreamResponse(self, conn, idle, deadline if first_chunk else None)
        raise UpstreamBroken("upstream closed two connections without answering")  # pragma: no cover

    def forget(self, url: str) -> None:
        """Close the idle connections to an upstream that left the fleet."""
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        for conn in self._idle.pop(key, []):
            if conn.transport is not None:
                conn.transport.close()
        if not self._waiting.get(key):
            self._waiting.pop(key, None)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
