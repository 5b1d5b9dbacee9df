"""The mock engine speaks vLLM's OpenAI dialect well enough for the proxy and the flow."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from proxy_helpers import mock

from biofleet.devtools.mock_engine import embed_text, parse_args


@pytest.fixture(scope="module")
def gen():
    s = mock(("coder", "coder-alias"), max_model_len=64)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def emb():
    s = mock("embeddings", kind="embed", embedding_dim=16, api_key="sekret")
    yield s
    s.stop()


def test_models_and_health(gen):
    with httpx.Client(base_url=gen.url) as c:
        assert c.get("/health").status_code == 200
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == ["coder", "coder-alias"]


def test_chat_is_deterministic_with_usage(gen):
    body = {"model": "coder", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
    with httpx.Client(base_url=gen.url) as c:
        a, b = c.post("/v1/chat/completions", json=body).json(), c.post("/v1/chat/completions", json=body).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert a["object"] == "chat.completion" and a["choices"][0]["finish_reason"] == "length"


def test_streaming_chat_reassembles_to_the_same_text(gen):
    body = {"model": "coder", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
    with httpx.Client(base_url=gen.url) as c:
        full = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        r = c.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == full
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_completions_stream_and_plain(gen):
    with httpx.Client(base_url=gen.url) as c:
        plain = c.post("/v1/completions", json={"model": "coder", "prompt": "abc", "max_tokens": 3}).json()
        assert plain["object"] == "text_completion"
        r = c.post("/v1/completions", json={"model": "coder", "prompt": "abc", "max_tokens": 3, "stream": True})
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == plain["choices"][0]["text"]


def test_unknown_model_and_context_length(gen):
    with httpx.Client(base_url=gen.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions",
                   json={"model": "coder", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100})
        assert r.status_code == 400 and "maximum context length is 64" in r.json()["error"]["message"]
        assert c.post("/v1/embeddings", json={"model": "coder", "input": "x"}).status_code == 400
        # a prompt of the wrong type is the client's error, as vLLM answers it (fuzzing the proxy found a 500)
        for bad in (-1, True, {}, [{}], [[1.5]]):
            r = c.post("/v1/completions", json={"model": "coder", "prompt": bad})
            assert r.status_code == 400 and "prompt" in r.json()["error"]["message"], (bad, r.text)
        assert c.post("/v1/completions", json={"model": "coder", "prompt": [1, 2], "max_tokens": 2}).status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "coder", "messages": [{"role": "user", "content": "x"}],
                                                 "stream": True, "stream_options": "yes"})
        assert r.status_code == 400 and "stream_options" in r.json()["error"]["message"], r.text


def test_embeddings_unit_norm_deterministic_and_auth(emb):
    with httpx.Client(base_url=emb.url) as c:
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/health").status_code == 200  # like vLLM: /health needs no key
        h = {"Authorization": "Bearer sekret"}
        for bad in (["a", 1], [[1, "x"]], [{}], 3):  # the client's error, not a 500 (found by fuzzing the proxy)
            bad_r = c.post("/v1/embeddings", json={"model": "embeddings", "input": bad}, headers=h)
            assert bad_r.status_code == 400 and "input must be" in bad_r.json()["error"]["message"], bad_r.text
        assert c.post("/v1/embeddings", json={"model": "embeddings", "input": [[1, 2]]}, headers=h).status_code == 200
        r = c.post("/v1/embeddings", json={"model": "embeddings", "input": ["a b", "c"]}, headers=h).json()
    v = r["data"][0]["embedding"]
    assert len(v) == 16 and math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9)
    assert v == embed_text("a b", 16) and r["data"][1]["embedding"] != v
    assert r["usage"]["prompt_tokens"] == 3


def test_metrics_use_vllm_names(gen):
    text = httpx.get(gen.url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{model_name="coder"}}' in text


def test_fail_toggle_and_fail_rate():
    s = mock("m", fail_rate=1.0)
    try:
        with httpx.Client(base_url=s.url) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            assert c.post("/v1/chat/completions", json=body).status_code == 500
            assert c.post("/admin/fail").json() == {"failing": True}
            assert c.get("/health").status_code == 503
            assert c.post("/v1/chat/completions", json=body).status_code == 503
            assert c.post("/admin/fail?on=0").json() == {"failing": False}
            assert c.get("/health").status_code == 200
    finally:
        s.stop()


def test_cli_flags(monkeypatch):
    a = parse_args(["--port", "9", "--served-model-name", "a", "b", "--kind", "embed", "--latency-ms", "2",
                    "--ttft-ms", "3", "--tokens-per-s", "50", "--fail-rate", "0.1", "--embedding-dim", "8",
                    "--max-model-len", "128"])
    assert a.served_model_name == ["a", "b"] and a.kind == "embed" and a.tokens_per_s == 50
    assert a.embedding_dim == 8 and a.max_model_len == 128 and a.fail_rate == 0.1


def test_at_most_max_num_seqs_generate_at_once_the_rest_wait():
    """Like vLLM's batch limit: with max_num_seqs 1, a second request waits for the first (its
    answer comes a whole latency later) and shows as waiting in /metrics meanwhile."""
    import threading
    import time

    s = mock("coder", latency_ms=400, max_num_seqs=1)
    try:
        done: dict[int, float] = {}

        def ask(i: int, stream: bool) -> None:
            body = {"model": "coder", "messages": [{"role": "user", "content": "x"}], "stream": stream}
            r = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=10)
            assert r.status_code == 200
            done[i] = time.monotonic()

        threads = [threading.Thread(target=ask, args=(i, i == 1)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'vllm:num_requests_running{model_name="coder"} 1.0' in metrics
        assert 'vllm:num_requests_waiting{model_name="coder"} 1.0' in metrics
        for t in threads:
            t.join(10)
        assert abs(done[1] - done[0]) >= 0.3  # one after the other, not side by side
    finally:
        s.stop()
