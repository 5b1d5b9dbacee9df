"""Requests held while an elastic server has no ready replica.

Each elastic server has one :class:`HeldQueue`: a FIFO of waiters, bounded in count
(``max_held``) and in time (``cold_start_s``). The controller releases them in arrival order when
a replica becomes routable — when several were started together for a burst, each takes its
share as it turns ready (:meth:`HeldQueue.spread`) — or fails them all with the reason when the
start failed.

A held request does not answer until then, except:

* a streaming request gets its response headers (200, ``text/event-stream``) and an SSE comment
  (``: waiting ...``) every ``keepalive_s`` once it has waited that long, so proxies and load
  balancers in between do not close an idle connection. When it is released, the forwarding path
  continues that stream through :class:`ContinuedStream`, which drops the upstream's second
  header block and turns an upstream error answer into an in-band SSE error event;
* a request that cannot be held (queue full, a start that just failed) or whose wait ends
  without a replica gets an OpenAI-shaped 503 with ``Retry-After`` and the reason — in-band as an
  SSE error event (with ``retry_after``) when keep-alives already went out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field

from biofleet.proxy.transport import Message, RawHeaders, Send, send_error

_SSE_HEADERS: RawHeaders = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]  # nginx: pass the comments on as they come
_ERROR_BODY_LIMIT = 64 * 1024


@dataclass
class Refusal:
    """Why a held request gets no replica: what the client reads, and when to try again."""

    reason: str
    code: str  # replica_start_failed, cold_start_timeout, held_queue_full, ...
    retry_after: int = 10


@dataclass(eq=False)
class Waiter:
    fut: asyncio.Future[Refusal | None]
    since: float  # time.monotonic() at arrival
    stream: bool


@dataclass
class HeldQueue:
    """The held requests of one elastic server, oldest first."""

    server: str
    waiters: deque[Waiter] = field(default_factory=deque)
    # One release episode (from the first replica ready until the queue is empty): how many went on.
    released: int = 0
    episode_start: float | None = None

    def __len__(self) -> int:
        return len(self.waiters)

    def add(self, stream: bool) -> Waiter:
        w = Waiter(asyncio.get_running_loop().create_future(), time.monotonic(), stream)
        self.waiters.append(w)
        return w

    def discard(self, w: Waiter) -> None:
        try:
            self.waiters.remove(w)
        except ValueError:
            pass

    def oldest_s(self, now: float) -> float:
        return now - self.waiters[0].since if self.waiters else 0.0

    def release_all(self) -> list[Waiter]:
        """A replica is ready: every waiter goes on, in arrival order."""
        return self.release(len(self.waiters))

    def release(self, n: int) -> list[Waiter]:
        """The ``n`` oldest waiters go on, in arrival order."""
        out = [self.waiters.popleft() for _ in range(min(n, len(self.waiters)))]
        for w in out:
            if not w.fut.done():
                w.fut.set_result(None)
        self.released += len(out)
        if not self.waiters:
            self.released, self.episode_start = 0, None
        return out

    def spread(self, now: float, ready: int, coming: int, spread_s: float) -> list[Waiter]:
        """Release what the ``ready`` replicas' share is, while ``coming`` more (started together,
        running, not ready yet) are about to take theirs: a burst that started several replicas
        at once is not all sent to whichever answered its probe first. After ``spread_s`` from the
        first release, everything goes on. Returns the waiters released."""
        if not self.waiters or ready <= 0:
            return []
        if self.episode_start is None:
            self.episode_start = now
        if coming <= 0 or now - self.episode_start >= spread_s:
            return self.release_all()
        total = self.released + len(self.waiters)
        share = -(-total * ready // (ready + coming))  # ceil
        return self.release(share - self.released)

    def fail_all(self, refusal: Refusal) -> list[Waiter]:
        out = list(self.waiters)
        self.waiters.clear()
        for w in out:
            if not w.fut.done():
                w.fut.set_result(refusal)
        return out


async def refuse(send: Send, served: str, refusal: Refusal, *, headers_sent: bool) -> None:
    """Answer a request no replica will take: a 503 (or, after keep-alives, an in-band SSE error)."""
    message = f"no replica of {served!r} is available: {refusal.reason}"
    if not headers_sent:
        await send_error(send, 503, message, refusal.code, [(b"retry-after", str(refusal.retry_after).encode())])
        return
    await send({"type": "http.response.body", "body": sse_event_error(message, refusal.code, 503,
                                                                      refusal.retry_after), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def sse_event_error(message: str, code: str, status: int, retry_after: int | None = None) -> bytes:
    """An OpenAI-style error as one SSE event (what a client sees when a stream fails after its headers)."""
    err: dict[str, object] = {"message": message, "type": "service_unavailable" if status == 503 else "server_error",
                              "param": None, "code": code}
    if retry_after is not None:
        err["retry_after"] = retry_after
    return b"data: " + json.dumps({"error": err}).encode() + b"\n\n"


async def start_stream(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": list(_SSE_HEADERS)})


async def keepalive(send: Send, text: str) -> None:
    line = " ".join(text.split())[:200]
    await send({"type": "http.response.body", "body": f": {line}\n\n".encode(), "more_body": True})


class ContinuedStream:
    """The ``send`` for a held streaming request whose response headers already went out.

    The forwarding path answers as it would any request; this passes an upstream event stream on
    (minus its header block) and turns anything else (an error answer, JSON) into an in-band SSE
    error event followed by the end of the stream.
    """

    def __init__(self, send: Send) -> None:
        self.send = send
        self.passing: bool | None = None  # None: no header block yet
        self.status = 0
        self.body = bytearray()

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.status = int(msg["status"])
            ctype = next((v for k, v in msg.get("headers", ()) if k.lower() == b"content-type"), b"")
            self.passing = self.status == 200 and ctype.startswith(b"text/event-stream")
            return
        if msg["type"] != "http.response.body":
            await self.send(msg)
            return
        if self.passing:
            await self.send(msg)
            return
        if len(self.body) < _ERROR_BODY_LIMIT:
            self.body += msg.get("body", b"")[: _ERROR_BODY_LIMIT - len(self.body)]
        if msg.get("more_body", False):
            return
        message = f"upstream answered {self.status}"
        try:
            parsed = json.loads(bytes(self.body))
            detail = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else None
            if isinstance(detail, str):
                message = detail
        except (ValueError, AttributeError):
            pass
        await self.send({"type": "http.response.body", "body": sse_event_error(message, "upstream_error", self.status),
                         "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
