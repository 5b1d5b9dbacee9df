"""Helpers for the proxy and mock-engine tests: real uvicorn servers on loopback.

Each server runs in its own thread with its own event loop, on a port the OS
picks, so tests exercise real sockets (streaming, disconnects, keep-alive)
and can still look at the app's state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn

from biofleet.devtools.mock_engine import build_app as build_mock
from biofleet.proxy.app import ProxyApp, build_app
from biofleet.proxy.config import ProxyConfig, StaticBackend
from biofleet.proxy.server import uvicorn_options


class ServerThread:
    """``with ServerThread(app) as s: s.url``: uvicorn on 127.0.0.1, stopped on exit."""

    def __init__(self, app: Any, port: int = 0, **options: Any):
        self.app = app
        options = {"access_log": False, "lifespan": "on", "http": "h11", **options}
        self.config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", **options)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop gracefully; past 10 s (a connection a test left hanging) force it, and fail if the
        thread still runs: a server left behind keeps its background loops (discovery, probes) going
        until the interpreter exits."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=10)
        if self.thread.is_alive():
            raise RuntimeError(f"server on port {self.port} did not stop in 20 s")

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (to touch its state safely) and return its result."""
        assert self.loop is not None
        fut: asyncio.Future = asyncio.run_coroutine_threadsafe(_acall(fn), self.loop)
        return fut.result(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _acall(fn: Callable[[], Any]) -> Any:
    return fn()


def mock(names: str | tuple[str, ...], **kw: Any) -> ServerThread:
    names = (names,) if isinstance(names, str) else names
    return ServerThread(build_mock(names, **kw)).start()


def proxy_config(backends: dict[str, tuple[str, tuple[str, ...] | str]], **kw: Any) -> ProxyConfig:
    """``{"b1": (url, "coder")}`` -> a ProxyConfig with fast probes for tests."""
    bk = {
        name: StaticBackend(url=url, served_names=(served,) if isinstance(served, str) else served)
        for name, (url, served) in backends.items()
    }
    kw.setdefault("probe_interval_s", 0.2)
    kw.setdefault("discovery_interval_s", 0.2)
    kw.setdefault("readmit_after", 1)
    return ProxyConfig(backends=bk, **kw)


def start_proxy(config: ProxyConfig, *, h11: bool = True, **kw: Any) -> tuple[ServerThread, ProxyApp]:
    """The proxy app on uvicorn with the client limits ``biofleet proxy`` runs with (on h11, or on
    httptools with ``h11=False``)."""
    app = build_app(config, **kw)
    return ServerThread(app, **uvicorn_options(config, h11=h11)).start(), app


@pytest.fixture
def stack():
    """Servers a test started, stopped at its end (``keep``); import it into a test module."""
    with contextlib.ExitStack() as s:
        yield s


def keep(stack: contextlib.ExitStack, server: Any) -> Any:
    stack.callback(server.stop)
    return server


def proxy(stack: contextlib.ExitStack, config: ProxyConfig, **kw: Any) -> tuple[ServerThread, ProxyApp]:
    p, app = start_proxy(config, **kw)
    keep(stack, p)
    return p, app


def inflight(app: ProxyApp) -> dict[str, int]:
    return {k: b.inflight for k, b in app.state.pool.backends.items()}


def settled(app: ProxyApp) -> None:
    """Every in-flight count back to 0 (the proxy finishes its bookkeeping just after the last byte)."""
    wait_until(lambda: not any(inflight(app).values()), timeout=2, what=f"in-flight 0, have {inflight(app)}")


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Upstream:
    """A scriptable fake backend (raw ASGI): records requests, answers with ``handler``.

    ``handler(path, headers, body, send)`` is an async function; the default answers
    a small JSON chat completion. ``/health`` answers ``health_status`` and counts
    the probes in ``health_probes``.
    """

    def __init__(self, handler: Callable[..., Any] | None = None, served: str = "coder"):
        self.handler = handler or self.default
        self.served = served
        self.requests: list[dict[str, Any]] = []
        self.health_status = 200
        self.health_probes = 0
        self.disconnected = threading.Event()

    async def default(self, path: str, headers: dict[str, str], body: bytes, send: Any) -> None:
        await send_bytes(send, 200, chat_body(self.served))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            self.health_probes += 1
            await send_bytes(send, self.health_status, b"")
            return
        if scope["path"] == "/metrics":
            await send_bytes(send, 200, b"", b"text/plain")
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "headers": headers, "body": body, "raw_headers": scope["headers"]})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()

        w = asyncio.ensure_future(watch())
        try:
            await self.handler(scope["path"], headers, body, send)
        finally:
            w.cancel()


async def send_bytes(send: Any, status: int, body: bytes, ctype: bytes = b"application/json",
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def upstream(handler: Callable[..., Any] | None = None, served: str = "coder") -> tuple[ServerThread, Upstream]:
    u = Upstream(handler, served)
    return ServerThread(u).start(), u


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawServer:
    """A hand-written HTTP/1.1 server on loopback, for misbehaviour uvicorn never produces
    (closing a kept-alive connection on a request, a status line and nothing more).

    Every GET (the proxy's /health and /metrics probes) is answered 200 with an empty
    body. ``handler(req, writer)`` is called for each other request with ``req`` = {"method", "path", "headers", "body", "nth"}, ``nth``
    counting the requests before it on the same connection; it writes the answer to the
    ``asyncio.StreamWriter`` and returns True to keep the connection open. Every request
    it was given is in ``requests``; ``connections`` counts accepted connections.
    ``idle_close_s`` closes a connection idle that long after an answer (like a
    server's keep-alive timeout).
    """

    def __init__(self, handler: Callable[..., Any], idle_close_s: float | None = None, port: int = 0,
                 record: bool = True):
        self.handler = handler
        self.record = record
        self.idle_close_s = idle_close_s
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = port

    def start(self) -> RawServer:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._conn, "127.0.0.1", self.port), self.loop)
        self.server = server.result(timeout=10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(asyncio.current_task())
        nth = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                req = {"method": method, "path": path, "headers": headers, "body": body, "nth": nth}
                if self.record:
                    self.requests.append(req)
                nth += 1
                if not await self.handler(req, writer):
                    return
                await writer.drain()
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chat_body(served: str = "coder") -> bytes:
    """A small non-streaming chat completion."""
    return (b'{"id":"x","object":"chat.completion","model":"%s","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}') % served.encode()


def chat_reply(served: str = "coder") -> bytes:
    """A whole HTTP/1.1 200 response carrying :func:`chat_body`, for RawServer handlers."""
    body = chat_body(served)
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


_SERVE_JSON = """
import json, sys
from biofleet.proxy.config import ProxyConfig
from biofleet.proxy.server import serve
serve(ProxyConfig.model_validate_json(sys.argv[1]), log_level=sys.argv[2])
"""


class ProxyProcess:
    """A real proxy process on a loopback port, its output in ``log``; stopped (by PID) on exit.

    ``ProxyProcess(config=ProxyConfig(...))`` runs :func:`biofleet.proxy.server.serve`, the
    function behind ``biofleet proxy``, with settings the CLI does not offer (short client
    timeouts); ``ProxyProcess(argv=[...])`` runs ``biofleet proxy`` itself (``--port`` is added).
    ``nofile`` caps the process's descriptor limit (soft and hard).
    """

    def __init__(self, tmp: Any, *, config: ProxyConfig | None = None, argv: list[str] | None = None,
                 nofile: int | None = None, log_level: str = "info", wait: bool = True):
        import subprocess
        import sys

        self.port = free_port()
        self.log = tmp / f"proxy-{self.port}.log"
        if config is not None:
            config = config.model_copy(update={"port": self.port})
            cmd = [sys.executable, "-c", _SERVE_JSON, _config_json(config), log_level]
        else:
            cmd = [sys.executable, "-m", "biofleet.cli.main", "proxy", *(argv or []), "--port", str(self.port),
                   "--log-level", log_level]

        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=limit if nofile is not None else None)
        if wait:
            self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> None:
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the proxy exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                httpx.get(self.url + "/health", timeout=1)
                return True
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=timeout, what="the proxy to listen")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_kib(self) -> int:
        from pathlib import Path

        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        import os

        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _config_json(config: ProxyConfig) -> str:
    """The config as JSON, the token included (SecretStr hides it from plain dumps)."""
    import json

    data = json.loads(config.model_dump_json())
    if config.token is not None:
        data["token"] = config.token.get_secret_value()
    return json.dumps(data)
