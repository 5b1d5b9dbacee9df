"""Issue 11's table, row by row: a real proxy process on a loopback port, real sockets, in front
of backends that misbehave (a hung engine, one that answers 500 to everything), clients that
misbehave (half a header block, a body that never ends, thousands of connections, absurd JSON,
huge model names) and a registry that holds bad records. Each test names its row.

The proxy runs as its own process (:class:`ProxyProcess`) through the function behind
``biofleet proxy`` (or the CLI itself where the row is about the CLI), so descriptor limits,
the HTTP server's own parsing and the log are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import selectors
import socket
import threading
import time

import httpx
from proxy_helpers import (
    ProxyProcess,
    RawServer,
    chat_body,
    keep,
    mock,
    proxy,
    proxy_config,
    send_bytes,
    upstream,
    wait_until,
)

from biofleet.proxy.config import ProxyConfig
from biofleet.proxy.discovery import RegistrySource
from biofleet.registry import Endpoint, write_record

CHAT = {"model": "coder", "messages": [{"role": "user", "content": "hello"}]}
TOKEN = "tok-hostile"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["message"] and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    return err


def raw_exchange(port: int, data: bytes, timeout: float) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the proxy closes it (or ``timeout``,
    which fails the test): the bytes received, and the seconds it took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise AssertionError(f"the proxy kept the connection open for {timeout} s; got {got[:200]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got, time.monotonic() - t0


def trickle(port: int, data: bytes, gap: float = 0.1) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``gap`` seconds until the proxy answers or closes: what it
    sent (b"" if it reset the connection) and when."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for ch in data:
            if select.select([s], [], [], gap)[0]:
                break
            try:
                s.sendall(bytes([ch]))
            except OSError:
                return b"", time.monotonic() - t0
        took = time.monotonic() - t0
        try:
            return s.recv(65536), took
        except OSError:
            return b"", took


def no_tracebacks(p: ProxyProcess) -> None:
    text = p.log_text()
    assert "Traceback" not in text, text[-3000:]


# -- row 1: 25k requests whose model is a unique 4 KB string ------------------------------------


def test_row1_unknown_model_names_do_not_grow_metrics(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    with ProxyProcess(tmp_path, config=proxy_config({"c": (coder.url, "coder")})) as p, \
            httpx.Client(base_url=p.url, timeout=10) as c:
        for i in range(2000):
            model = f"{i:06d}" + "m" * 4090  # unique, 4 KB
            r = c.post("/v1/chat/completions", json={**CHAT, "model": model})
            assert r.status_code == 404
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        text = c.get("/metrics").text
        # every unknown name is one label value; the size of /metrics follows the fleet, not the traffic
        assert len(text) < 20_000, len(text)
        assert "mmmmmmmmmm" not in text
        assert 'biofleet_proxy_errors_total{kind="model_not_found",model="(other)"} 2000.0' in text
        assert 'biofleet_proxy_requests_total{backend="c",model="coder",status="200"} 1.0' in text
        no_tracebacks(p)


# -- row 2: /metrics and /health without a token ---------------------------------------------------


def test_row2_metrics_and_detailed_health_need_the_token(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    cfg = proxy_config({"coder@4242": (coder.url, "coder")}, token=TOKEN)
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: c.get("/health").status_code == 200, what="backend admitted")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert_openai_error(c.get("/metrics", headers=headers), 401, "invalid_api_key")
            h = c.get("/health", headers=headers)
            # up/down only: no model names, no server@job keys, no traffic for a neighbour to aim at
            assert h.status_code == 200 and h.json() == {"status": "ok"}, h.text
            assert "coder" not in h.text and "4242" not in h.text
        m = c.get("/metrics", headers=AUTH)
        assert m.status_code == 200 and 'biofleet_proxy_backend_healthy{backend="coder@4242"} 1.0' in m.text
        detail = c.get("/health", headers=AUTH).json()
        assert detail["backends"] == {"coder@4242": True} and detail["models"]["coder"]["healthy"] == 1
        coder.app.state.engine.failing = True  # /health 503: unauthenticated callers still learn up/down
        wait_until(lambda: c.get("/health").status_code == 503, what="degraded")
        assert c.get("/health").json() == {"status": "degraded"}


# -- row 3: half a header block; a chunked body that never ends; thousands of connections -----------


def _short_client_timeouts(**kw) -> ProxyConfig:
    return proxy_config({"c": (kw.pop("url"), "coder")}, client_header_timeout_s=1.0, client_body_timeout_s=1.0, **kw)


def test_row3_half_a_header_block_is_answered_408_and_closed(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    with ProxyProcess(tmp_path, config=_short_client_timeouts(url=coder.url)) as p:
        got, took = raw_exchange(p.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty", timeout=8)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert 0.8 < took < 5, took
        # a connection that sends nothing at all gets the same deadline
        got, took = raw_exchange(p.port, b"", timeout=8)
        assert got.startswith(b"HTTP/1.1 408 ") and took < 5
        # a header block trickled a byte at a time is held to the deadline from its first byte
        got, took = trickle(p.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
        assert took < 3 and (got.startswith(b"HTTP/1.1 408 ") or got == b""), (took, got[:200])
        # an endless header block is cut at the size cap, not buffered
        got, _ = raw_exchange(p.port, b"POST / HTTP/1.1\r\nX-Big: " + b"b" * 200_000, timeout=8)
        assert got.startswith(b"HTTP/1.1 431 "), got[:200]
        assert httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 200
        kept_alive_idle_is_not_a_header_timeout(p.port)
        no_tracebacks(p)


def test_row3_chunked_body_that_never_ends_is_answered_408(stack, tmp_path):
    seen, rec = upstream()
    keep(stack, seen)
    with ProxyProcess(tmp_path, config=_short_client_timeouts(url=seen.url)) as p:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n")
        got, took = raw_exchange(p.port, head, timeout=8)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert b"request body not received within 1 s" in got and took < 5
        # a Content-Length body that stops short: the same
        got, _ = raw_exchange(p.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                              timeout=8)
        assert got.startswith(b"HTTP/1.1 408 ")
        assert rec.requests == []  # nothing half-read was forwarded
        no_tracebacks(p)


def test_row3_connection_flood_is_answered_503_not_accept_errors(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    # 256 descriptors (a small cluster default): room for (256 - 64) / 2 = 96 clients, each with an upstream
    cfg = proxy_config({"c": (coder.url, "coder")}, client_header_timeout_s=6.0)
    with ProxyProcess(tmp_path, config=cfg, nofile=256) as p:
        assert "descriptor limit 256 allows 96 client connections" in p.log_text()
        held: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(400):  # half a header block each, then silence
                s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                held.append(s)
            time.sleep(0.5)
            with selectors.DefaultSelector() as sel:
                for s in held:
                    sel.register(s, selectors.EVENT_READ)
                answered = [key.fileobj for key, _ in sel.select(timeout=1)]
            for s in answered:
                data = s.recv(65536)
                assert data.startswith(b"HTTP/1.1 503 "), data[:200]
                refused += 1
                body = json.loads(data.split(b"\r\n\r\n", 1)[1])
                assert body["error"]["code"] == "too_many_connections" and b"retry-after: 1" in data.lower()
            assert 400 - 96 - 2 <= refused <= 400 - 96 + 2, refused  # the rest hold their slot until the header deadline
            # a well-behaved client during the flood: a clear 503 with Retry-After, not a reset
            r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=5)
            assert_openai_error(r, 503, "too_many_connections")
            assert r.headers["retry-after"] == "1"
        finally:
            for s in held:
                s.close()
        wait_until(lambda: httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=5).status_code == 200,
                   timeout=10, what="service after the flood")
        log = p.log_text()
        assert "Traceback" not in log and "accept" not in log.lower(), log[-3000:]
        assert len(log.splitlines()) < 20, log[-3000:]  # one line per 10 s about refusals, not one per connection


# -- row 4: a backend that accepts requests and never answers (its /health still 200) ---------------


async def _never_answers(req, writer):
    await asyncio.sleep(3600)
    return False


def test_row4_hung_backend_answers_504_within_the_first_byte_timeout(stack, tmp_path):
    hung = keep(stack, RawServer(_never_answers).start())
    cfg = proxy_config({"h": (hung.url, "coder")}, first_byte_timeout_s=1.5, stream_first_byte_timeout_s=1.5)
    with ProxyProcess(tmp_path, config=cfg) as p:
        t0 = time.monotonic()
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=20)
        assert_openai_error(r, 504, "upstream_timeout")
        assert "no answer within 1.5 s" in r.json()["error"]["message"]
        assert 1.4 < time.monotonic() - t0 < 5
        # streaming: its own first-byte timeout (the first event), set from the CLI as well
        t0 = time.monotonic()
        r = httpx.post(p.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=20)
        assert_openai_error(r, 504, "upstream_timeout")
        assert "no first event within 1.5 s" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 5


def test_row4_hung_replica_is_retried_around_and_ejected(stack, tmp_path):
    hung = keep(stack, RawServer(_never_answers).start())
    good = keep(stack, mock("coder"))
    cfg = proxy_config({"h": (hung.url, "coder"), "g": (good.url, "coder")}, first_byte_timeout_s=1.0,
                       eject_after=2, strategy="round-robin")
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=20) as c:
        wait_until(lambda: all(c.get("/health").json()["backends"].values()), what="both admitted")
        for _ in range(6):
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@g", r.text
        assert c.get("/health").json()["backends"] == {"h": False, "g": True}  # /health 200 did not re-admit it
        assert 'biofleet_proxy_ejections_total{backend="h",reason="failing"} 1.0' in c.get("/metrics").text
        assert len(hung.requests) == 2  # two timeouts in a row, then out of rotation


def test_row4_deep_probe_ejects_a_hung_engine_and_moves_its_waiting_requests(stack, tmp_path):
    hung = keep(stack, RawServer(_never_answers).start())
    good = keep(stack, mock("coder"))
    # a first-byte timeout of a minute: only the deep probe can free the requests stuck on the hung engine
    cfg = proxy_config({"h": (hung.url, "coder"), "g": (good.url, "coder")}, first_byte_timeout_s=60,
                       deep_probe=True, deep_probe_interval_s=2, deep_probe_timeout_s=0.5,
                       eject_base_s=0.5, eject_max_s=1)
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=30) as c:
        wait_until(lambda: all(c.get("/health").json()["backends"].values()), what="both admitted")
        out: list[httpx.Response] = []

        def call() -> None:
            with httpx.Client(timeout=30) as c2:
                out.append(c2.post(p.url + "/v1/chat/completions", json=CHAT))

        t0 = time.monotonic()
        threads = [threading.Thread(target=call) for _ in range(4)]  # ties take turns: two go to the hung one
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in out] == [200] * 4, [r.text for r in out]
        assert time.monotonic() - t0 < 10  # not the 60 s timeout
        assert any(req["path"] == "/v1/completions" for req in hung.requests)  # the deep probe
        time.sleep(2)  # past its ejection interval, /health answers 200; only a passing deep probe brings it back
        assert c.get("/health").json()["backends"] == {"h": False, "g": True}
        assert "deep probe: no answer within 0.5 s" in p.log_text()


# -- row 5: a backend that answers every request with 500 ---------------------------------------------


def test_row5_replica_answering_500_is_retried_and_ejected(stack, tmp_path):
    async def boom(path, headers, body, send):
        await send_bytes(send, 500, b'{"error":{"message":"engine exploded"}}')

    bad, rec = upstream(boom)
    keep(stack, bad)
    good = keep(stack, mock("coder"))
    cfg = proxy_config({"bad": (bad.url, "coder"), "good": (good.url, "coder")}, eject_base_s=30)
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: all(c.get("/health").json()["backends"].values()), what="both admitted")
        for _ in range(40):
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@good", r.text
        assert len(rec.requests) == 5  # eject_after: five 500s in a row, all retried, then out for 30 s
        assert c.get("/health").json()["backends"] == {"bad": False, "good": True}
        text = c.get("/metrics").text
        assert 'biofleet_proxy_ejections_total{backend="bad",reason="failing"} 1.0' in text
        assert 'biofleet_proxy_retries_total{model="coder"} 5.0' in text


def test_row5_a_request_every_engine_fails_ejects_no_replica(stack, tmp_path):
    """A client on a shared fleet sends what makes the engine fail (an input vLLM answers with 500) or what runs past
    the first-byte timeout. Charging the replicas for it would let that client eject all but one of them, five
    requests at a time. A 500 or a timeout counts toward ejection only once another replica answers the same
    request; a second one makes the request the cause: it is not retried further (at most two replicas see it) and
    nobody is charged."""
    async def picky(path, headers, body, send):
        if b"poison" in body:
            await send_bytes(send, 500, b'{"error":{"message":"internal error on this input"}}')
        else:
            await send_bytes(send, 200, chat_body("coder"))

    async def slow(path, headers, body, send):  # a request that runs past the first-byte timeout on any engine
        if b"poison" in body:
            await asyncio.sleep(1.5)
        await send_bytes(send, 200, chat_body("coder"))

    for handler, timeout, codes in ((picky, 10.0, (500, 502)), (slow, 0.4, (502, 504))):
        _no_replica_charged_for(stack, tmp_path, handler, timeout, codes)


def _no_replica_charged_for(stack, tmp_path, handler, first_byte_timeout, codes):
    ups = [upstream(handler) for _ in range(3)]
    for server, _ in ups:
        keep(stack, server)
    cfg = proxy_config({f"r{i}": (server.url, "coder") for i, (server, _) in enumerate(ups)}, eject_base_s=30,
                       first_byte_timeout_s=first_byte_timeout)
    poison = {"model": "coder", "messages": [{"role": "user", "content": "poison"}]}
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: all(c.get("/health").json()["backends"].values()), what="all admitted")
        for _ in range(12):
            r = c.post("/v1/chat/completions", json=poison)
            assert r.status_code in codes, r.text
        assert sum(len(rec.requests) for _, rec in ups) <= 24  # two replicas a request at most
        assert all(c.get("/health").json()["backends"].values())  # nobody ejected
        for _ in range(6):
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert "biofleet_proxy_ejections_total{" not in c.get("/metrics").text
        no_tracebacks(p)


# -- row 6: --backend m=URL1 --backend m=URL2 -----------------------------------------------------------


def test_row6_repeated_backend_name_means_replicas(stack, tmp_path):
    a = keep(stack, mock("coder"))
    b = keep(stack, mock("coder"))
    argv = ["--backend", f"coder={a.url}", "--backend", f"coder={b.url}"]
    with ProxyProcess(tmp_path, argv=argv) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: c.get("/health").json().get("models", {}).get("coder", {}).get("healthy") == 2,
                   what="two replicas")
        routes = [c.post("/v1/chat/completions", json=CHAT).headers["x-biofleet-route"] for _ in range(20)]
    # sequential requests tie on load: they take turns, as nginx's least_conn does
    assert routes.count("coder@coder") == 10 and routes.count("coder@coder#2") == 10, routes
    assert a.app.state.engine.requests_total == 10 and b.app.state.engine.requests_total == 10


def test_a_registry_that_does_not_exist_is_refused_at_start(tmp_path):
    # found by a sweep of the commands: a mistyped --registry was served, discovering nothing, answering 503 forever
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "biofleet.cli.main", "proxy", "--registry", str(tmp_path / "nope"),
                        "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"--registry {tmp_path / 'nope'}: no such directory" in r.stderr, r.stderr


def test_row6_the_same_backend_twice_is_a_clear_error(monkeypatch):
    from typer.testing import CliRunner

    from biofleet.cli.main import app
    from biofleet.proxy import server

    def no_serve(config, **kw):  # a regression shows as this failure, not as a proxy serving for good
        raise AssertionError(f"the CLI accepted it and would serve {dict(config.backends)}")

    monkeypatch.setattr(server, "serve", no_serve)

    r = CliRunner().invoke(app, ["proxy", "--backend", "coder=http://127.0.0.1:8001",
                                 "--backend", "coder=http://127.0.0.1:8001/"])
    assert r.exit_code == 2 and "given twice" in r.output and "its own URL" in r.output, r.output
    r = CliRunner().invoke(app, ["proxy", "--backend", "coder=http://user:pw@127.0.0.1:8001"])
    assert r.exit_code == 2 and "credentials" in r.output and "pw@" not in r.output.replace("'", ""), r.output


# -- rows 7 and 8, the proxy's side: bad registry records ---------------------------------------------


def _record(reg, url: str, server: str = "coder", job: str = "100") -> None:
    write_record(reg, Endpoint(fleet="f", server=server, url=url, served_names=("coder",), job_id=job))


def test_rows7_8_bad_registry_records_are_skipped_logged_once_and_never_block(stack, tmp_path):
    reg = tmp_path / "registry"
    good = keep(stack, mock("coder"))
    _record(reg, good.url)
    os.mkfifo(reg / "fifo.json")  # a reader that opens it blocks until a writer comes
    os.symlink("/dev/zero", reg / "zero.json")  # endless
    (tmp_path / "outside.json").write_text(Endpoint(fleet="f", server="evil", url="http://127.0.0.1:9",
                                                    served_names=("coder",)).model_dump_json())
    os.symlink(tmp_path / "outside.json", reg / "outside.json")  # a record from outside the registry
    with open(reg / "huge.json", "wb") as f:  # 100 MB (sparse)
        f.truncate(100 << 20)
    (reg / "creds.json").write_text(json.dumps({"fleet": "f", "server": "creds", "served_names": ["coder"],
                                                "url": "http://admin:hunter2@127.0.0.1:9"}))
    (reg / "crlf.json").write_text(json.dumps({"fleet": "f", "server": "x\r\n2099-01-01 INFO forged",
                                               "served_names": ["coder"], "url": "http://127.0.0.1:9"}))
    (reg / "nested.json").write_text("[" * 30_000 + "]" * 30_000)  # under the size cap, past any recursion limit
    cfg = ProxyConfig(registry_dir=reg, discovery_interval_s=0.2, probe_interval_s=0.2, readmit_after=1)
    with ProxyProcess(tmp_path, config=cfg) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: c.get("/health").json().get("backends") == {"coder@100": True}, what="the good record")
        t0 = time.monotonic()
        r = c.post("/admin/reload")
        assert r.status_code == 200 and r.json()["backends"] == 1 and time.monotonic() - t0 < 2
        time.sleep(2)  # ten more polls
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert p.rss_kib() < 200_000  # the 100 MB record and /dev/zero were never read
        log = p.log_text()
        skipped = [ln for ln in log.splitlines() if "record(s) skipped" in ln]
        assert len(skipped) == 1, log[-3000:]  # once per change, not once per poll
        # the files passed over (fifo, huge, outside, zero) and the records refused (creds, crlf, nested)
        assert "7 record(s) skipped" in skipped[0] and "'fifo.json': not a regular file" in skipped[0], skipped
        assert "hunter2" not in log and "\n2099-01-01 INFO forged" not in log, log[-3000:]
        no_tracebacks(p)
        (reg / "creds.json").unlink()  # a change: one more line
        wait_until(lambda: "6 record(s) skipped" in p.log_text(), what="the change logged")
        time.sleep(1)
        assert sum("record(s) skipped" in ln for ln in p.log_text().splitlines()) == 2


def test_registry_read_that_hangs_never_blocks_reload_or_discovery(stack, tmp_path):
    reg = tmp_path / "registry"
    good = keep(stack, mock("coder"))
    _record(reg, good.url)
    gate = threading.Event()
    stack.callback(gate.set)

    class Slow(RegistrySource):  # a shared filesystem that stops answering
        def fetch_sync(self):
            if gate_armed.is_set():
                gate.wait(30)
            return super().fetch_sync()

    gate_armed = threading.Event()
    source = Slow(reg, timeout_s=0.5)
    p, _ = proxy(stack, proxy_config({}, registry_dir=reg), source=source)
    with httpx.Client(base_url=p.url, timeout=10) as c:
        wait_until(lambda: c.post("/v1/chat/completions", json=CHAT).status_code == 200, what="admitted")
        gate_armed.set()
        t0 = time.monotonic()
        r = c.post("/admin/reload")
        assert r.status_code == 200 and r.json() == {"backends": 1, "models": ["coder"], "stalled": True}
        assert time.monotonic() - t0 < 2
        time.sleep(1)  # polls meanwhile: none piles another read onto the stuck one
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200  # the known backends still serve
        gate_armed.clear()
        gate.set()
        wait_until(lambda: "stalled" not in c.post("/admin/reload").json(), what="reads work again")


# -- row 9: a deeply nested JSON body ---------------------------------------------------------------------


def test_row9_deeply_nested_json_is_a_clean_400(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    with ProxyProcess(tmp_path, config=proxy_config({"c": (coder.url, "coder")})) as p:
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"model":"coder","messages":' + b"[" * 100_000):
            r = httpx.post(p.url + "/v1/chat/completions", content=body, timeout=10)
            assert_openai_error(r, 400, "invalid_json")
        assert httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 200
        no_tracebacks(p)


# -- row 10: an unknown model of 10 MB ------------------------------------------------------------------


def test_row10_huge_unknown_model_is_not_echoed(stack, tmp_path):
    coder = keep(stack, mock("coder"))
    with ProxyProcess(tmp_path, config=proxy_config({"c": (coder.url, "coder")})) as p:
        r = httpx.post(p.url + "/v1/chat/completions", json={**CHAT, "model": "q" * (10 << 20)}, timeout=30)
        err = assert_openai_error(r, 404, "model_not_found")
        assert len(r.content) < 1000 and "'qqqq" in err["message"] and "..." in err["message"], err
        r = httpx.post(p.url + "/v1/chat/completions", json={**CHAT, "task_type": "t\r\n" * 100_000}, timeout=30)
        err = assert_openai_error(r, 400, "unknown_task_type")
        assert len(r.content) < 1000 and "\r" not in err["message"], err
        r = httpx.get(p.url + "/" + "p" * 5000)  # an unknown path: short, and in the same error shape
        assert_openai_error(r, 404)
        assert len(r.content) < 1000



def test_client_limits_hold_on_h11_too(stack):
    """The same limits where httptools is missing (uvicorn's h11 protocol; in-process)."""
    coder = keep(stack, mock("coder"))
    p, _ = proxy(stack, _short_client_timeouts(url=coder.url, max_client_connections=3))
    got, took = raw_exchange(p.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", timeout=8)
    assert got.startswith(b"HTTP/1.1 408 ") and took < 5, got[:200]
    got, took = raw_exchange(p.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
                             timeout=8)
    assert got.startswith(b"HTTP/1.1 408 ") and b"request body" in got and took < 5, got[:200]
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(3)]
    try:
        got, _ = raw_exchange(p.port, b"", timeout=5)
        assert got.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in got, got[:200]
    finally:
        for s in held:
            s.close()
    wait_until(lambda: httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 200, what="served")
    kept_alive_idle_is_not_a_header_timeout(p.port)


def kept_alive_idle_is_not_a_header_timeout(port: int) -> None:
    """Between two requests a kept-alive connection waits for the keep-alive timeout, not for the
    (shorter) header deadline."""
    body = json.dumps(CHAT).encode()
    req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for _ in range(2):
            s.sendall(req)
            got = b""
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, f"closed after {got[:100]!r}"
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 "), got[:200]
            time.sleep(1.5)  # longer than the 1 s header deadline
