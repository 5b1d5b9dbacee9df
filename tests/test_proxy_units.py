"""Pure parts of the proxy: config, routing decisions, header handling, metrics parsing."""

from __future__ import annotations

import collections
import random

import pytest
from pydantic import ValidationError

from biofleet.proxy import routing as R
from biofleet.proxy.config import ProxyConfig, RoutingConfig, Rule, StaticBackend, load_routing_file, parse_backend_arg
from biofleet.proxy.discovery import Backend, BackendPool, BackendSpec
from biofleet.proxy.health import parse_vllm_load
from biofleet.proxy.transport import downstream_headers, redact_headers, request_id, upstream_request_headers

STATIC = {"a": StaticBackend(url="http://127.0.0.1:1", served_names=("coder",))}


def backend(key: str, served: str = "coder", **kw) -> Backend:
    b = Backend(BackendSpec(key, f"http://127.0.0.1/{key}", (served,)))
    for k, v in kw.items():
        setattr(b, k, v)
    return b


# -- config -------------------------------------------------------------------


def test_routing_config_is_frozen_and_forbids_unknown_keys():
    with pytest.raises(ValidationError, match="extra"):
        RoutingConfig.model_validate({"defualt": "coder"})
    r = RoutingConfig(default="coder")
    with pytest.raises(ValidationError):
        r.default = "math"  # type: ignore[misc]


def test_routing_config_full_shape():
    r = RoutingConfig.model_validate({
        "default": "coder", "aliases": {"gpt-4": "coder"}, "tasks": {"statistics": "math"},
        "fallbacks": {"coder": ["backup"]}, "intent_model": "intent",
        "cloud_fallbacks": [{"name": "deepseek", "base_url": "https://api.deepseek.com/v1",
                             "api_key_env": "DEEPSEEK_API_KEY", "models": {"coder": "deepseek-chat"}}],
        "rules": [{"pattern": r"\bp-?value\b", "task": "statistics"}],
        "safety": {"model": "safety", "fail": "open", "categories": {"S1": "Violent Crimes"}},
    })
    assert r.cloud_fallbacks[0].models == {"coder": "deepseek-chat"}
    assert r.safety is not None and r.safety.fail == "open"
    with pytest.raises(ValidationError, match="regular expression"):
        Rule(pattern="(", task="x")


def test_token_required_off_loopback(tmp_path):
    with pytest.raises(ValidationError, match="token"):
        ProxyConfig(host="0.0.0.0", backends=STATIC)
    ProxyConfig(host="::1", backends=STATIC)
    tok = tmp_path / "tok"
    tok.write_text("abc\n")
    c = ProxyConfig(host="0.0.0.0", backends=STATIC, token_file=tok)
    assert c.resolved_token() == "abc"
    assert "abc" not in repr(ProxyConfig(backends=STATIC, token="abc"))  # SecretStr
    with pytest.raises(ValidationError, match="no backends"):
        ProxyConfig()


def test_routing_file_and_backend_arg(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("routing:\n  default: coder\n  tasks: {statistics: math}\n")
    assert load_routing_file(f).tasks == {"statistics": "math"}
    assert parse_backend_arg("coder=http://127.0.0.1:8001")[1].served_names == ("coder",)
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_backend_arg("coder")


# -- routing ------------------------------------------------------------------


def test_round_robin_is_even():
    reps = [backend(f"b{i}") for i in range(3)]
    counts = collections.Counter(R.pick_backend(reps, "round-robin", c).key for c in range(1000))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_least_outstanding_then_engine_queue_as_tiebreak():
    a, b, c = backend("a", inflight=2), backend("b", inflight=1, waiting=3), backend("c", inflight=1)
    assert R.pick_backend([a, b, c], "least-outstanding", 0) is c
    c.waiting, c.kv_usage = 3, 0.5
    b.kv_usage = 0.2
    assert R.pick_backend([a, b, c], "least-outstanding", 0) is b
    # equal load: rotate, don't pile onto the first
    x, y = backend("x"), backend("y")
    assert {R.pick_backend([x, y], "least-outstanding", i).key for i in range(2)} == {"x", "y"}


def test_pick_skips_down_removed_and_saturated():
    a, b, c = backend("a", healthy=False), backend("b", removed=True), backend("c", inflight=4)
    assert R.pick_backend([a, b, c], "least-outstanding", 0, max_inflight=4) is None
    assert R.pick_backend([a, b, c], "least-outstanding", 0) is c


def test_fallback_chain_is_transitive_without_cycles():
    r = RoutingConfig(fallbacks={"coder": ["backup", "math"], "backup": ["coder", "tiny"]})
    assert R.fallback_chain("coder", r) == ["coder", "backup", "math", "tiny"]


def test_rules_and_task_table():
    rules = [Rule(pattern=r"p-?value|regression", task="statistics"), Rule(pattern="snakemake", task="code_generation")]
    assert R.classify_by_rules("What does a P-value mean?", rules) == "statistics"
    assert R.classify_by_rules("write a Snakemake rule", rules) == "code_generation"
    assert R.classify_by_rules("hello", rules) is None
    with pytest.raises(R.RouteError) as ei:
        R.model_for_task("nope", RoutingConfig(tasks={"statistics": "math"}))
    assert ei.value.status == 400 and "statistics" in ei.value.message


def test_parse_intent_and_safety_replies():
    tasks = ["code_generation", "statistics", "bio"]
    assert R.parse_intent_reply("Statistics.", tasks) == "statistics"
    assert R.parse_intent_reply("The category is code_generation", tasks) == "code_generation"
    assert R.parse_intent_reply("no idea", tasks) is None
    assert R.parse_safety_reply("safe").safe
    v = R.parse_safety_reply("unsafe\nS1,S10")
    assert not v.safe and v.categories == ("S1", "S10")


# -- discovery pool -------------------------------------------------------------


def test_pool_keeps_state_of_unchanged_and_replaces_moved():
    pool = BackendPool()
    pool.update([BackendSpec("a", "http://h:1", ("coder",)), BackendSpec("b", "http://h:2", ("coder",))])
    a = pool.backends["a"]
    a.inflight = 3
    added, removed = pool.update([BackendSpec("a", "http://h:1", ("coder",)), BackendSpec("b", "http://h:9", ("coder",))])
    assert pool.backends["a"] is a and a.inflight == 3
    assert [b.url for b in added] == ["http://h:9"] and removed[0].removed
    pool.update([])
    assert pool.replicas("coder") == [] and a.removed


# -- headers and metrics ----------------------------------------------------------


def test_request_headers_strip_hop_by_hop_and_swap_credentials():
    h = [(b"host", b"x"), (b"connection", b"keep-alive, x-secret-hop"), (b"x-secret-hop", b"1"),
         (b"authorization", b"Bearer client-token"), (b"transfer-encoding", b"chunked"), (b"content-type", b"application/json"),
         (b"te", b"trailers")]
    out = dict(upstream_request_headers(h, b"rid1", "backend-key"))
    assert out[b"authorization"] == b"Bearer backend-key"
    assert out[b"x-request-id"] == b"rid1" and out[b"content-type"] == b"application/json"
    for gone in (b"host", b"connection", b"x-secret-hop", b"transfer-encoding", b"te"):
        assert gone not in out
    assert b"authorization" not in dict(upstream_request_headers(h, b"r", None))


def test_request_id_passed_or_created():
    assert request_id([(b"x-request-id", b"abc")]) == b"abc"
    assert len(request_id([])) == 32


def test_response_headers():
    out = dict(downstream_headers([(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked"),
                                   (b"Connection", b"close")], b"coder@a", b"rid"))
    assert out == {b"content-type": b"text/event-stream", b"x-request-id": b"rid", b"x-biofleet-route": b"coder@a"}


def test_redact_headers():
    red = dict(redact_headers([(b"authorization", b"Bearer s"), ("X-Api-Key", "k"), ("x-proxy-token", "t"),
                               ("content-type", "application/json")]))
    assert red == {"authorization": "<redacted>", "X-Api-Key": "<redacted>", "x-proxy-token": "<redacted>",
                   "content-type": "application/json"}


def test_parse_vllm_metrics():
    text = """# HELP vllm:num_requests_waiting x
vllm:num_requests_waiting{engine="0",model_name="coder"} 3.0
vllm:num_requests_waiting{engine="1",model_name="coder"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="coder"} 0.25
vllm:num_requests_running{model_name="coder"} 7.0
"""
    assert parse_vllm_load(text) == (5.0, 0.25)
    assert parse_vllm_load("vllm:gpu_cache_usage_perc 0.5\n") == (None, 0.5)
    assert parse_vllm_load("garbage") == (None, None)


def test_rr_counts_with_random_health_flaps():
    rng = random.Random(1)
    reps = [backend(f"b{i}") for i in range(4)]
    counts = collections.Counter()
    for c in range(400):
        counts[R.pick_backend(reps, "round-robin", c).key] += 1
    assert max(counts.values()) - min(counts.values()) <= 1
    reps[rng.randrange(4)].healthy = False
    assert all(R.pick_backend(reps, "round-robin", c).healthy for c in range(10))
