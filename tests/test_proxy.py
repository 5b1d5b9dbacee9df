"""The proxy end to end: real uvicorn servers on loopback ports, in-process."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from proxy_helpers import (
    ServerThread,
    Upstream,
    free_port,
    inflight,
    keep,
    mock,
    proxy,
    proxy_config,
    send_bytes,
    settled,
    upstream,
    wait_until,
)

from biofleet.proxy.config import CloudFallback, RoutingConfig, Safety
from biofleet.proxy.discovery import RegistrySource
from biofleet.registry import Endpoint, write_record

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


# -- routing ----------------------------------------------------------------------


def test_routes_by_served_name_and_alias_with_route_header(stack):
    us, rec = upstream(served="coder")
    keep(stack, us)
    p, _ = proxy(stack, proxy_config({"b1": (us.url, "coder")}, routing=RoutingConfig(aliases={"gpt-4o": "coder"})))
    with httpx.Client(base_url=p.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o", **CHAT})
    assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@b1"
    assert r.json()["choices"][0]["message"]["content"] == "ok"  # body as the backend sent it
    assert json.loads(rec.requests[-1]["body"])["model"] == "coder"


def test_body_forwarded_byte_for_byte_when_model_needs_no_rewrite(stack):
    us, rec = upstream()
    keep(stack, us)
    p, _ = proxy(stack, proxy_config({"b1": (us.url, "coder")}))
    raw = b'{"model":"coder",  "messages":[{"role":"user","content":"h\\u00e9"}], "temperature": 0.50}'
    httpx.post(p.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert rec.requests[-1]["body"] == raw


def test_task_type_routes_and_is_stripped(stack):
    us, rec = upstream(served="math")
    keep(stack, us)
    routing = RoutingConfig(tasks={"statistics": "math"})
    p, _ = proxy(stack, proxy_config({"m": (us.url, "math")}, routing=routing))
    with httpx.Client(base_url=p.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "auto", "task_type": "statistics", **CHAT})
        assert r.status_code == 200 and r.headers["x-biofleet-route"] == "math@m"
        sent = json.loads(rec.requests[-1]["body"])
        assert sent["model"] == "math" and "task_type" not in sent
        r = c.post("/v1/chat/completions", json={"model": "auto", "task_type": "poetry", **CHAT})
        assert r.status_code == 400 and "statistics" in r.json()["error"]["message"]


def test_auto_uses_intent_model_then_rules_then_default(stack):
    coder, math_, intent = (keep(stack, mock(n)) for n in ("coder", "math", "intent"))
    intent.app.state.engine.reply = lambda text: "statistics" if "variance" in text else "I am unsure"
    routing = RoutingConfig(
        default="coder", intent_model="intent", tasks={"statistics": "math", "code_generation": "coder"},
        rules=[{"pattern": r"snakemake", "task": "code_generation"}, {"pattern": "anova", "task": "statistics"}],
    )
    p, _ = proxy(stack, proxy_config({"c": (coder.url, "coder"), "m": (math_.url, "math"),
                                      "i": (intent.url, "intent")}, routing=routing))

    def route(text: str) -> str:
        r = httpx.post(p.url + "/v1/chat/completions",
                       json={"model": "auto", "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        return r.headers["x-biofleet-route"]

    assert route("what is the variance of x") == "math@m"  # the intent model decided
    assert route("run an ANOVA please") == "math@m"  # intent unsure -> rules
    assert route("hello") == "coder@c"  # nothing decided -> default
    assert intent.app.state.engine.requests_total == 3


def test_auto_without_any_routing_is_a_clear_400(stack):
    coder = keep(stack, mock("coder"))
    p, _ = proxy(stack, proxy_config({"c": (coder.url, "coder")}))
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "auto", **CHAT})
    assert r.status_code == 400 and "routing.default" in r.json()["error"]["message"]


# -- headers and security ---------------------------------------------------------------


def test_headers_hop_by_hop_request_id_and_backend_key(stack, tmp_path):
    us, rec = upstream()
    keep(stack, us)
    (tmp_path / "key").write_text("backend-secret\n")
    p, _ = proxy(stack, proxy_config({"b1": (us.url, "coder")}, token="client-token",
                                     backend_api_key_file=tmp_path / "key"))
    h = {"Authorization": "Bearer client-token", "Connection": "keep-alive, X-Hop", "X-Hop": "1",
         "X-Request-Id": "req-42", "X-Custom": "kept"}
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT}, headers=h)
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    got = rec.requests[-1]["headers"]
    assert got["authorization"] == "Bearer backend-secret"
    assert got["x-request-id"] == "req-42" and got["x-custom"] == "kept"
    assert "x-hop" not in got and "client-token" not in json.dumps(got)
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT},
                   headers={"Authorization": "Bearer client-token"})
    assert len(r.headers["x-request-id"]) == 32 and rec.requests[-1]["headers"]["x-request-id"] == r.headers["x-request-id"]


def test_token_required(stack):
    coder = keep(stack, mock("coder"))
    p, _ = proxy(stack, proxy_config({"c": (coder.url, "coder")}, token="t0k"))
    with httpx.Client(base_url=p.url) as c:
        for h in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0k"}):
            r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT}, headers=h)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/v1/models", headers=h).status_code == 401
            assert c.post("/admin/reload", headers=h).status_code == 401
        ok = {"Authorization": "Bearer t0k"}
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}, headers=ok).status_code == 200
        assert c.post("/admin/reload", headers=ok).status_code == 200


def test_request_errors_are_openai_shaped(stack):
    coder = keep(stack, mock("coder"))
    p, _ = proxy(stack, proxy_config({"c": (coder.url, "coder")}, max_body_bytes=200))
    with httpx.Client(base_url=p.url) as c:
        r = c.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = c.post("/v1/chat/completions", json={"model": "coder"})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"model": "coder"})
        assert r.status_code == 400 and "input" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"model": "llama-9000", **CHAT})
        assert r.status_code == 404 and "coder" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"model": "coder", "messages": [{"role": "user", "content": "x" * 500}]})
        assert r.status_code == 413
        assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_models_union_and_health(stack):
    a, b, e = keep(stack, mock("coder")), keep(stack, mock(("coder", "math"))), keep(stack, mock("emb", kind="embed"))
    p, _app = proxy(stack, proxy_config({"a": (a.url, "coder"), "b": (b.url, ("coder", "math")), "e": (e.url, "emb")},
                                       routing=RoutingConfig(aliases={"gpt": "coder", "math": "math"})))
    with httpx.Client(base_url=p.url) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert sorted(ids) == ["coder", "emb", "gpt", "math"]
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["models"]["coder"] == {"healthy": 2, "total": 2}
        assert h.json()["backends"] == {"a": True, "b": True, "e": True}
        httpx.post(e.url + "/admin/fail?on=1")
        wait_until(lambda: c.get("/health").status_code == 503, what="emb marked down")
        body = c.get("/health").json()
        assert body["down"] == ["emb"] and body["models"]["emb"] == {"healthy": 0, "total": 1}
        assert body["backends"]["e"] is False and "127.0.0.1" not in json.dumps(body)
        assert "emb" not in [m["id"] for m in c.get("/v1/models").json()["data"]]


# -- failures -------------------------------------------------------------------------


def test_connect_refused_retries_on_another_replica_and_ejects(stack):
    live = keep(stack, mock("coder"))
    dying = keep(stack, mock("coder"))
    p, app = proxy(stack, proxy_config({"dead": (dying.url, "coder"), "live": (live.url, "coder")},
                                       probe_interval_s=3600, strategy="round-robin"))
    # Both passed their first probe at start; the next probe is an hour away, so only
    # a request can find out that this one died.
    assert p.call(lambda: [b.healthy and b.ever_up for b in app.state.pool.backends.values()]) == [True, True]
    dying.stop()
    with httpx.Client(base_url=p.url) as c:
        for _ in range(4):
            r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
            assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@live"
    assert not app.state.pool.backends["dead"].healthy
    assert 'biofleet_proxy_retries_total{model="coder"} 1.0' in httpx.get(p.url + "/metrics").text


def test_503_retries_then_fallback_chain_then_cloud(stack):
    async def busy(path, headers, body, send):
        await send_bytes(send, 503, b'{"error":{"message":"overloaded"}}')

    sick, rec = upstream(busy)
    keep(stack, sick)
    backup = keep(stack, mock("backup"))
    cloud = keep(stack, mock("deepseek-chat", api_key="cloud-key"))
    routing = RoutingConfig(
        fallbacks={"coder": ["backup"]},
        cloud_fallbacks=[CloudFallback(name="ds", base_url=cloud.url + "/v1", api_key_env="DS_KEY",
                                       models={"coder": "deepseek-chat"})],
    )
    p, _ = proxy(stack, proxy_config({"s": (sick.url, "coder"), "bk": (backup.url, "backup")}, routing=routing),
                 environ={"DS_KEY": "cloud-key"})
    with httpx.Client(base_url=p.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 200 and r.headers["x-biofleet-route"] == "backup@bk"
        assert len(rec.requests) == 1
        httpx.post(backup.url + "/admin/fail?on=1")
        wait_until(lambda: c.get("/health").status_code == 503, what="backup down")
        r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 200, r.text
        assert r.headers["x-biofleet-route"] == "deepseek-chat@cloud:ds"
        assert r.json()["model"] == "deepseek-chat"
        assert 'to="cloud:ds"' in c.get("/metrics").text


def test_all_down_is_503_with_retry_after(stack):
    dead_url = f"http://127.0.0.1:{free_port()}"
    p, _ = proxy(stack, proxy_config({"dead": (dead_url, "coder")}))
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT})
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "no_healthy_backend"


def test_ejected_backend_gets_no_requests_and_is_readmitted(stack):
    m = keep(stack, mock("coder"))
    p, app = proxy(stack, proxy_config({"m": (m.url, "coder")}, readmit_after=2))
    eng = m.app.state.engine
    with httpx.Client(base_url=p.url) as c:
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200
        c.post(m.url + "/admin/fail?on=1")
        wait_until(lambda: not app.state.pool.backends["m"].healthy, what="ejection")
        before = eng.requests_total
        r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 503 and eng.requests_total == before
        c.post(m.url + "/admin/fail?on=0")
        wait_until(lambda: app.state.pool.backends["m"].healthy, what="re-admission")
        assert app.state.pool.backends["m"].ok_streak >= 2
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200


def test_backend_that_becomes_ready_is_admitted_before_the_next_full_probe_round(stack):
    """A server still loading is probed every half second, not every probe interval:
    `up` reports READY and the proxy routes to it moments later. The full probe round is
    an hour away here, so only the fast probing of not-yet-admitted servers explains it."""
    port = free_port()
    p, app = proxy(stack, proxy_config({"late": (f"http://127.0.0.1:{port}", "coder")}, probe_interval_s=3600))

    def healthy() -> bool:
        return p.call(lambda: app.state.pool.backends["late"].healthy)

    wait_until(lambda: p.call(lambda: app.state.pool.backends["late"].last_error) is not None,
               what="first probe fails (nothing listens)")
    loading = Upstream()
    loading.health_status = 503  # listening, model not loaded yet
    keep(stack, ServerThread(loading, port=port).start())
    wait_until(lambda: loading.health_probes >= 3, timeout=10, what="repeated probes of the loading server")
    assert not healthy()
    loading.health_status = 200
    wait_until(healthy, timeout=10, what="admission")
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT})
    assert r.status_code == 200 and r.headers["x-biofleet-route"] == "coder@late"


def test_saturated_is_429_with_retry_after(stack):
    gate = threading.Event()

    async def slow(path, headers, body, send):
        await asyncio.to_thread(gate.wait, 5)
        await send_bytes(send, 200, b"{}")

    us, _ = upstream(slow)
    keep(stack, us)
    p, app = proxy(stack, proxy_config({"u": (us.url, "coder")}, max_inflight_per_backend=1))
    first = threading.Thread(target=lambda: httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT}))
    first.start()
    try:
        wait_until(lambda: inflight(app)["u"] == 1)
        r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
    finally:
        gate.set()
        first.join()
    settled(app)


# -- in-flight accounting ----------------------------------------------------------------


def test_inflight_back_to_zero_after_success_and_upstream_error(stack):
    async def err(path, headers, body, send):
        await send_bytes(send, 500, b'{"error":{"message":"boom"}}')

    good = keep(stack, mock("coder"))
    bad, _ = upstream(err, served="bad")
    keep(stack, bad)
    p, app = proxy(stack, proxy_config({"g": (good.url, "coder"), "b": (bad.url, "bad")}))
    with httpx.Client(base_url=p.url) as c:
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "bad", **CHAT})
        assert r.status_code == 500 and r.json()["error"]["message"] == "boom"  # passed through
    settled(app)


def test_upstream_timeout_is_504_and_releases_inflight(stack):
    async def stuck(path, headers, body, send):
        await asyncio.sleep(1)
        await send_bytes(send, 200, b"{}")

    us, _ = upstream(stuck)
    keep(stack, us)
    p, app = proxy(stack, proxy_config({"u": (us.url, "coder")}, first_byte_timeout_s=0.3))
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    settled(app)


def test_client_disconnect_mid_stream_releases_inflight_and_upstream(stack):
    gate = threading.Event()

    async def stream(path, headers, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"n":1}\n\n', "more_body": True})
        await asyncio.to_thread(gate.wait, 5)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    us, rec = upstream(stream)
    keep(stack, us)
    p, app = proxy(stack, proxy_config({"u": (us.url, "coder")}))
    try:
        with httpx.Client() as c, c.stream("POST", p.url + "/v1/chat/completions",
                                            json={"model": "coder", "stream": True, **CHAT}) as r:
            assert r.status_code == 200, r.read()
            it = r.iter_raw()  # keep a reference: a collected iterator closes the connection
            assert next(it) == b'data: {"n":1}\n\n'
            assert inflight(app) == {"u": 1}
        # the client closed its connection: the proxy must notice without the upstream producing anything
        wait_until(lambda: inflight(app) == {"u": 0}, what="in-flight released")
        assert rec.disconnected.wait(5), "upstream request was not cancelled"
    finally:
        gate.set()


def test_started_stream_is_not_retried_and_ends_with_sse_error(stack):
    async def breaks(path, headers, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"n":1}\n\n', "more_body": True})
        raise RuntimeError("engine crashed mid-stream")

    a, rec_a = upstream(breaks)
    b, rec_b = upstream(breaks)
    keep(stack, a), keep(stack, b)
    p, app = proxy(stack, proxy_config({"a": (a.url, "coder"), "b": (b.url, "coder")}))
    r = httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", "stream": True, **CHAT})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0] == 'data: {"n":1}'
    assert json.loads(events[-1][len("data: "):])["error"]["code"] == "upstream_broken"
    assert len(rec_a.requests) + len(rec_b.requests) == 1
    settled(app)


def test_each_stream_chunk_reaches_client_before_next_is_produced(stack):
    n = 4
    gates = [threading.Event() for _ in range(n)]
    released_by_client: list[bool] = []

    async def gated(path, headers, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            # the next chunk is only produced once the client has seen this one
            released_by_client.append(await asyncio.to_thread(gates[i].wait, 5))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    us, _ = upstream(gated)
    keep(stack, us)
    p, _ = proxy(stack, proxy_config({"u": (us.url, "coder")}))
    seen = []
    with httpx.Client(timeout=10) as c, c.stream("POST", p.url + "/v1/chat/completions",
                                                 json={"model": "coder", "stream": True, **CHAT}) as r:
        for line in r.iter_lines():
            if not line:
                continue
            seen.append(line)
            if line != "data: [DONE]":
                gates[int(line[len("data: "):])].set()
    assert seen == [f"data: {i}" for i in range(n)] + ["data: [DONE]"]
    assert released_by_client == [True] * n


# -- official client ----------------------------------------------------------------------


def test_openai_client_streaming_and_not(stack):
    openai = pytest.importorskip("openai")
    coder, emb = keep(stack, mock("coder")), keep(stack, mock("emb", kind="embed"))
    p, app = proxy(stack, proxy_config({"c": (coder.url, "coder"), "e": (emb.url, "emb")}, token="tk"))
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="tk", max_retries=0)
    try:
        msgs = [{"role": "user", "content": "write a pipeline"}]
        full = client.chat.completions.create(model="coder", messages=msgs, max_tokens=8)
        assert full.usage.completion_tokens == 8
        stream = client.chat.completions.create(model="coder", messages=msgs, max_tokens=8, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text == full.choices[0].message.content
        raw = client.chat.completions.with_raw_response.create(model="coder", messages=msgs)
        assert raw.headers["x-biofleet-route"] == "coder@c"
        e = client.embeddings.create(model="emb", input=["a", "b"])
        assert len(e.data) == 2 and len(e.data[0].embedding) == 384
        assert sorted(m.id for m in client.models.list()) == ["coder", "emb"]
        bad = openai.OpenAI(base_url=p.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="coder", messages=msgs)
    finally:
        client.close()
    settled(app)


# -- discovery --------------------------------------------------------------------------


def _record(reg, url: str, job: str = "100", served=("coder",)):
    write_record(reg, Endpoint(fleet="f", server="coder", url=url, served_names=served, job_id=job))


class _CountingSource:
    """A registry source that numbers its polls and notes the first one that saw each key."""

    def __init__(self, reg):
        self.inner = RegistrySource(reg)
        self.polls = 0
        self.first_seen: dict[str, int] = {}

    async def fetch(self):
        self.polls += 1
        specs = await self.inner.fetch()
        for s in specs:
            self.first_seen.setdefault(s.key, self.polls)
        return specs


def test_registry_add_move_remove_without_dropping_inflight(stack, tmp_path):
    reg = tmp_path / "registry"
    a = keep(stack, mock("coder", tokens_per_s=20))  # 10 tokens: a 0.5 s stream
    b = keep(stack, mock("coder"))
    source = _CountingSource(reg)
    p, app = proxy(stack, proxy_config({}, registry_dir=reg, discovery_interval_s=1.0), source=source)
    with httpx.Client(base_url=p.url, timeout=10) as c:
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 404
        polls_before = p.call(lambda: source.polls)
        _record(reg, a.url)
        wait_until(lambda: c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200,
                   timeout=10, what="new backend")
        # picked up by the periodic poll alone (no reload asked): the first poll that started
        # after the write, or the one already running then
        assert p.call(lambda: source.first_seen["coder@100"]) - polls_before <= 2

        result: dict = {}

        def long_stream():
            with httpx.Client(timeout=10) as c2:
                r = c2.post(p.url + "/v1/chat/completions",
                            json={"model": "coder", "stream": True, "max_tokens": 10, **CHAT})
                result["text"] = r.text

        t = threading.Thread(target=long_stream)
        t.start()
        wait_until(lambda: inflight(app).get("coder@100") == 1, what="stream in flight")
        _record(reg, b.url)  # same job, new address: a moved server
        wait_until(lambda: app.state.pool.backends["coder@100"].url == b.url, timeout=5, what="move")
        wait_until(lambda: app.state.pool.backends["coder@100"].healthy, timeout=5, what="probe of moved")
        r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 200
        t.join()
        assert result["text"].rstrip().endswith("data: [DONE]")  # the in-flight stream finished on the old address
        assert b.app.state.engine.requests_total >= 1
        for f in reg.glob("*.json"):
            f.unlink()
        wait_until(lambda: not app.state.pool.backends, timeout=5, what="removal")
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 404


def test_admin_reload_picks_up_now(stack, tmp_path):
    reg = tmp_path / "registry"
    m = keep(stack, mock("coder"))
    p, _app = proxy(stack, proxy_config({}, registry_dir=reg, discovery_interval_s=60))
    _record(reg, m.url)
    r = httpx.post(p.url + "/admin/reload")
    assert r.status_code == 200 and r.json()["models"] == ["coder"]
    assert httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200


# -- safety ------------------------------------------------------------------------------


def test_safety_blocks_with_category_and_fails_as_configured(stack):
    coder = keep(stack, mock("coder"))
    guard = keep(stack, mock("guard", reply=lambda t: "unsafe\nS1" if "weapon" in t else "safe"))
    safety = Safety(model="guard", fail="closed", categories={"S1": "Violent Crimes"})
    p, _ = proxy(stack, proxy_config({"c": (coder.url, "coder"), "g": (guard.url, "guard")},
                                     routing=RoutingConfig(safety=safety)))
    with httpx.Client(base_url=p.url) as c:
        assert c.post("/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200
        r = c.post("/v1/chat/completions",
                   json={"model": "coder", "messages": [{"role": "user", "content": "build a weapon"}]})
        assert r.status_code == 400 and "S1 (Violent Crimes)" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "content_blocked"
        c.post(guard.url + "/admin/fail?on=1")  # safety model down: closed -> refuse
        r = c.post("/v1/chat/completions", json={"model": "coder", **CHAT})
        assert r.status_code == 503 and r.json()["error"]["code"] == "safety_unavailable"

    p2, _ = proxy(stack, proxy_config({"c": (coder.url, "coder"), "g": (guard.url, "guard")},
                                      routing=RoutingConfig(safety=safety.model_copy(update={"fail": "open"}))))
    assert httpx.post(p2.url + "/v1/chat/completions", json={"model": "coder", **CHAT}).status_code == 200


# -- metrics and CLI ----------------------------------------------------------------------


def test_metrics_exposed(stack):
    m = keep(stack, mock("coder"))
    p, _ = proxy(stack, proxy_config({"m": (m.url, "coder")}))
    httpx.post(p.url + "/v1/chat/completions", json={"model": "coder", **CHAT})
    httpx.post(p.url + "/v1/chat/completions", json={"model": "nope", **CHAT})
    text = httpx.get(p.url + "/metrics").text
    assert 'biofleet_proxy_requests_total{backend="m",model="coder",status="200"} 1.0' in text
    assert 'biofleet_proxy_request_seconds_count{backend="m",model="coder"} 1.0' in text
    assert 'biofleet_proxy_errors_total{kind="model_not_found",model="(other)"} 1.0' in text  # never a client string
    assert 'biofleet_proxy_backend_healthy{backend="m"} 1.0' in text
    assert 'biofleet_proxy_inflight{backend="m"} 0.0' in text


def test_cli_builds_config_and_calls_serve(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from biofleet.cli.main import app
    from biofleet.proxy import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda config, **kw: seen.setdefault("config", config))
    routing = tmp_path / "routing.yaml"
    routing.write_text("default: coder\ntasks: {statistics: math}\n")
    tok = tmp_path / "tok"
    tok.write_text("s3cret")
    r = CliRunner().invoke(app, ["proxy", "--backend", "coder=http://127.0.0.1:8001", "--backend",
                                 "math=http://127.0.0.1:8002", "--routing", str(routing), "--host", "0.0.0.0",
                                 "--token-file", str(tok), "--port", "9000"])
    assert r.exit_code == 0, r.output
    cfg = seen["config"]
    assert cfg.routing.tasks == {"statistics": "math"} and cfg.port == 9000 and cfg.host == "0.0.0.0"
    assert cfg.backends["math"].served_names == ("math",)
    r = CliRunner().invoke(app, ["proxy", "--backend", "coder=http://127.0.0.1:8001", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "token" in r.output
