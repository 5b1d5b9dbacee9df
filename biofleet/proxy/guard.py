"""What a client connection may cost the proxy: time, header bytes, and a connection slot.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``) but not a client that
sends half a header block and then nothing, nor a request body that never ends; and at the
descriptor limit every ``accept()`` fails. :func:`guarded` subclasses uvicorn's HTTP protocol
(httptools, or h11 where httptools is missing) to add, per connection:

- a header deadline: the whole header block within ``header_timeout_s`` of its first byte (or of
  the connection, for one that sends nothing), and at most ``max_header_bytes`` of it (h11
  counts those itself); else 408 (431 for size) and the connection is closed;
- a body deadline: the whole request body within ``body_timeout_s`` of the end of its headers;
  else 408 (when no answer started yet) and the connection is closed, so the app's ``receive()``
  sees a disconnect;
- a connection cap: past ``max_connections`` open connections a new one is answered at once with
  503, ``Retry-After`` and an OpenAI-shaped body, and closed, instead of being kept (or failing
  at the descriptor limit with an error per accept).

Timers are armed only while a request is incomplete after a read, so a request that arrives
whole in one read costs no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from biofleet.proxy.transport import error_body

log = logging.getLogger("biofleet.proxy")

_IDLE, _HEAD, _BODY = 0, 1, 2  # between requests, reading a header block, reading a body
_LINGER_S = 2.0  # how long a refused connection is read and discarded before it is closed
_MAX_LINGERING = 16  # past this many at once, a refused connection is closed at once (descriptors are short)


@dataclass
class ClientLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    # refusals since the last log line (one line per 10 s at most, not one per connection)
    refused: int = field(default=0, repr=False)
    last_log: float = field(default=0.0, repr=False)
    lingering: int = field(default=0, repr=False)  # refused connections still open

    def note_refused(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.last_log >= 10.0:
            log.warning("client connection limit (%d) reached: %d connection(s) answered 503 since the last "
                        "report", self.max_connections, self.refused)
            self.refused = 0
            self.last_log = now


def _response(status: int, reason: bytes, message: str, code: str, extra: bytes = b"") -> bytes:
    body = error_body(status, message, code)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
            % (status, reason, len(body), extra)) + body


class _Guard:
    """Mixed in before uvicorn's HttpToolsProtocol or H11Protocol (see :func:`guarded`)."""

    limits: ClientLimits
    # provided by the uvicorn protocol this is mixed into
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any

    def _guard_init(self) -> None:
        self._phase = _HEAD  # a new connection owes its first header block
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase = _IDLE
        self._head_bytes = 0
        self._refused = False
        self._lingers = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard_init()
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.limits.max_connections:
            self._refuse()
            return
        self._update_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the client closes or the linger ends
        if self._phase != _BODY:
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._cancel_timer()
            return
        self._sync_phase()
        if self._phase == _HEAD and self._head_bytes > self.limits.max_header_bytes:
            self._close_with(_response(431, b"Request Header Fields Too Large",
                                       f"request header block larger than {self.limits.max_header_bytes} bytes",
                                       "headers_too_large"))
            return
        self._update_timer()

    def eof_received(self) -> bool | None:
        if self._refused:
            return False  # close now: the client read our answer and is done
        return super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._lingers:
            self._lingers = False
            self.limits.lingering -= 1
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._sync_phase()
            self._update_timer()

    # -- phases ------------------------------------------------------------------------------

    def _sync_phase(self) -> None:
        """Where the client is in its current request (the httptools flavour keeps ``_phase``
        up to date from the parser's callbacks; the h11 flavour asks h11)."""

    def _update_timer(self) -> None:
        phase = self._phase
        if phase == self._timer_phase and (self._timer is not None or phase == _IDLE):
            return
        self._cancel_timer()
        if phase == _HEAD:
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._expired)
        elif phase == _BODY:
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._expired)
        self._timer_phase = phase

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = _IDLE

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._timer_phase == _HEAD:
            self._close_with(_response(408, b"Request Timeout", f"request headers not received within "
                                       f"{self.limits.header_timeout_s:g} s", "request_timeout"))
        else:
            started = self.cycle is not None and self.cycle.response_started
            self._close_with(b"" if started else _response(
                408, b"Request Timeout", f"request body not received within {self.limits.body_timeout_s:g} s",
                "request_timeout"))

    def _close_with(self, response: bytes) -> None:
        self._cancel_timer()
        if response:
            self.transport.write(response)
        self.transport.close()

    def _refuse(self) -> None:
        self._refused = True
        self.limits.note_refused()
        self.transport.write(_response(
            503, b"Service Unavailable",
            f"the proxy has {self.limits.max_connections} client connections open, its limit; retry shortly",
            "too_many_connections", b"retry-after: 1\r\n"))
        # Close our side after the answer but read what the client still sends for a moment:
        # closing with unread request bytes makes the kernel reset the connection, and the client
        # may then never see the 503.
        if self.limits.lingering < _MAX_LINGERING and self.transport.can_write_eof():
            self.limits.lingering += 1
            self._lingers = True
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()


class _HttpToolsGuard(_Guard):
    def on_message_begin(self) -> None:
        self._phase = _HEAD
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_bytes = 0
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()  # type: ignore[misc]


class _H11Guard(_Guard):
    conn: Any  # h11.Connection

    def _sync_phase(self) -> None:
        import h11

        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._phase = _BODY
        elif state is h11.IDLE and (self.conn.trailing_data[0] or self._phase == _HEAD):
            self._phase = _HEAD  # part of the next header block is in
        else:
            self._phase = _IDLE


def guarded(limits: ClientLimits, *, h11: bool = False) -> type:
    """uvicorn's HTTP protocol class (httptools unless ``h11`` or it is not installed) with the
    client limits above; pass it as ``uvicorn.Config(http=...)``."""
    if not h11:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            return type("GuardedHttpToolsProtocol", (_HttpToolsGuard, HttpToolsProtocol), {"limits": limits})
        except ImportError:  # pragma: no cover - httptools missing
            pass
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return type("GuardedH11Protocol", (_H11Guard, H11Protocol), {"limits": limits})


def usable_connections(wanted: int, reserve: int = 64) -> int:
    """How many client connections this process can hold: each may need an upstream connection
    too, plus ``reserve`` descriptors for the listener, probes, logs and the registry. Raises the
    soft descriptor limit to the hard one first (as Go's runtime and nginx's
    ``worker_rlimit_nofile`` do); returns ``wanted`` or less."""
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    fits = max(1, (soft - reserve) // 2)
    if fits < wanted:
        log.warning("descriptor limit %d allows %d client connections, not %d; using %d", soft, fits, wanted, fits)
    return min(wanted, fits)
