"""Pure parts of the proxy: config, routing decisions, header handling, metrics parsing."""

from __future__ import annotations

import collections
import os
import random

import pytest
from pydantic import ValidationError

from biofleet.proxy import routing as R
from biofleet.proxy.config import (
    ProxyConfig,
    RoutingConfig,
    Rule,
    StaticBackend,
    load_routing_file,
    parse_backend_arg,
    parse_backend_args,
)
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
    tok.write_text("x" * (64 * 1024 + 1))  # a token file is read only up to its bound, a FIFO not at all
    with pytest.raises(ValueError, match=r"tok is larger than 65536 bytes"):
        c.resolved_token()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        ProxyConfig(host="0.0.0.0", backends=STATIC, token_file=fifo).resolved_token()
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
    for bad, why in (("coder=ftp://h", "http"), ("co der=http://h:1", "served model name"),
                     ("coder=http://h:1/\r\nx: y", "control"), ("coder=http://u:secret@h:1", "credentials")):
        with pytest.raises(ValueError, match=why) as exc:
            parse_backend_arg(bad)
        assert "secret" not in str(exc.value) and "\r" not in str(exc.value)


def test_repeated_backend_is_a_replica_and_the_same_twice_an_error():
    out = parse_backend_args(["coder=http://127.0.0.1:1", "math=http://127.0.0.1:2", "coder=http://127.0.0.1:3",
                              "coder=http://127.0.0.1:4"])
    assert {k: b.url for k, b in out.items()} == {"coder": "http://127.0.0.1:1", "math": "http://127.0.0.1:2",
                                                  "coder#2": "http://127.0.0.1:3", "coder#3": "http://127.0.0.1:4"}
    assert {b.served_names for b in out.values()} == {("coder",), ("math",)}
    with pytest.raises(ValueError, match="given twice"):
        parse_backend_args(["coder=http://127.0.0.1:1", "coder=http://127.0.0.1:1/"])
    parse_backend_args(["coder=http://127.0.0.1:1", "math=http://127.0.0.1:1"])  # one server, two names: fine


# -- routing ------------------------------------------------------------------


def test_round_robin_is_even():
    reps = [backend(f"b{i}") for i in range(3)]
    counts = collections.Counter(R.pick_backend(reps, "round-robin", c).key for c in range(1000))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_least_outstanding_then_engine_queue_as_tiebreak():
    a, b, c = backend("a", inflight=2), backend("b", inflight=1, waiting=3), backend("c", inflight=1)
    assert R.pick_backend([a, b, c], "least-outstanding", 0) is c
    c.waiting, c.kv_usage = 3, 0.95  # a KV cache nearly full loses a tie
    b.kv_usage = 0.2
    assert R.pick_backend([a, b, c], "least-outstanding", 0) is b
    # equal load: take turns, don't pile onto the first
    x, y = backend("x"), backend("y")
    assert [R.pick_backend([x, y], "least-outstanding", i).key for i in range(4)] == ["x", "y", "x", "y"]


def test_least_outstanding_takes_turns_despite_stale_kv_scrapes():
    # a scrape that landed during a request leaves a small KV usage for seconds: not a reason to
    # send every request to the other replica meanwhile (nginx least_conn: round-robin among ties)
    x, y = backend("x", kv_usage=0.004), backend("y", kv_usage=0.0)
    picks = collections.Counter(R.pick_backend([x, y], "least-outstanding", i).key for i in range(100))
    assert picks == {"x": 50, "y": 50}


def test_retry_budget_allows_a_ratio_of_requests_plus_a_floor():
    now = [1000.0]
    b = R.RetryBudget(ratio=0.2, min_per_s=1, window_s=10, clock=lambda: now[0])
    assert sum(b.spend() for _ in range(50)) == 10  # the floor: 1/s over 10 s, no requests yet
    for _ in range(100):
        b.request()
    assert b.can_retry() and sum(b.spend() for _ in range(50)) == 20  # + 20% of 100 requests
    assert not b.spend() and not b.can_retry()
    now[0] += 5  # still in the window
    assert not b.can_retry()
    now[0] += 6  # the first second left the window: its requests and retries with it
    assert b.can_retry() and b.requests == 0 and b.retries == 0
    now[0] += 3600  # a long pause clears everything at once
    assert sum(b.spend() for _ in range(50)) == 10


def test_outlier_ejection_grows_and_keeps_the_last_replica():
    from biofleet.proxy.health import Outliers

    pool = BackendPool()
    pool.update([BackendSpec("a", "http://h:1", ("coder",)), BackendSpec("b", "http://h:2", ("coder",))])
    a, b = pool.backends["a"], pool.backends["b"]
    now = [100.0]
    seen: list[tuple[str, str]] = []
    o = Outliers(pool, eject_after=3, base_s=10, max_s=60, on_eject=lambda x, why: seen.append((x.key, why)),
                 clock=lambda: now[0])
    o.failure(a, "500")
    o.failure(a, "500")
    o.success(a)  # not in a row: starts again
    o.failure(a, "500")
    o.failure(a, "500")
    assert a.healthy
    o.failure(a, "timeout")
    assert not a.healthy and a.ejected_until == 110 and seen == [("a", "failing")]
    for _ in range(5):  # the last healthy replica of coder is never ejected by its answers
        o.failure(b, "500")
    assert b.healthy and seen == [("a", "failing")]
    a.healthy = True  # re-admitted by probes after its interval
    for _ in range(3):
        o.failure(a, "500")
    assert a.ejected_until == 100 + 20  # twice as long the second time in a row
    for _ in range(4):
        a.healthy = True
        for _ in range(3):
            o.failure(a, "500")
    assert a.ejected_until == 100 + 60  # capped at max_s
    now[0] += 1000  # long in rotation since: back to the base interval
    a.healthy = True
    for _ in range(3):
        o.failure(a, "500")
    assert a.ejected_until == now[0] + 10
    o.eject(b, "deep probe", deep=True)  # an active probe's verdict ejects even the last one
    assert not b.healthy and b.needs_deep_pass and seen[-1] == ("b", "hung")


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


# -- bounded metrics ----------------------------------------------------------------


def test_metrics_of_a_removed_backend_are_dropped():
    from biofleet.proxy.metrics import ProxyMetrics

    m = ProxyMetrics()
    for key in ("coder", "math@7"):  # a backend key may equal a model name
        m.answered("coder", key, 200, 0.01)
        m.first_byte("coder", key, 0.01)
        m.inflight_gauge(key).inc()
        m.ejected(key, "failing")
        m.healthy.labels(key).set(1)
    m.forget_backend("coder")
    text = m.render().decode()
    assert 'backend="coder"' not in text
    assert 'biofleet_proxy_requests_total{backend="math@7",model="coder",status="200"} 1.0' in text
    assert 'biofleet_proxy_first_byte_seconds_count{backend="math@7",model="coder"} 1.0' in text
    assert 'biofleet_proxy_inflight{backend="math@7"} 1.0' in text


# -- profile -> proxy flags ------------------------------------------------------------


def test_profile_proxy_settings_become_proxy_flags():
    from biofleet.paths import FleetPaths
    from biofleet.profile import ProxySettings

    paths = FleetPaths("/w/f")
    base = paths.proxy_args("0.0.0.0", "8080", ProxySettings())
    assert base[-2:] == ["--backend-key-file", "/w/f/secrets/backend.key"]  # nothing set: the proxy's defaults
    px = ProxySettings(connect_timeout_s=2, first_byte_timeout_s=900, stream_first_byte_timeout_s=30,
                       idle_timeout_s=45.5, deep_probe=True, max_client_connections=4096)
    assert paths.proxy_args("0.0.0.0", "8080", px)[len(base):] == [
        "--connect-timeout", "2", "--first-byte-timeout", "900", "--stream-first-byte-timeout", "30",
        "--idle-timeout", "45.5", "--deep-probe", "--max-connections", "4096"]
    with pytest.raises(ValidationError):
        ProxySettings(idle_timeout_s=0)


def test_proxy_flags_reach_the_proxy_config(monkeypatch):
    from typer.testing import CliRunner

    from biofleet.cli.main import app
    from biofleet.paths import FleetPaths
    from biofleet.profile import ProxySettings
    from biofleet.proxy import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda config, **kw: seen.setdefault("config", config))
    px = ProxySettings(connect_timeout_s=2, first_byte_timeout_s=900, stream_first_byte_timeout_s=30,
                       idle_timeout_s=45.5, deep_probe=True, max_client_connections=4096)
    r = CliRunner().invoke(app, ["proxy", "--backend", "coder=http://127.0.0.1:1", *px.proxy_flags()])
    assert r.exit_code == 0, r.output
    c = seen["config"]
    assert (c.connect_timeout_s, c.first_byte_timeout_s, c.stream_first_byte_timeout_s, c.idle_timeout_s,
            c.deep_probe, c.max_client_connections) == (2, 900, 30, 45.5, True, 4096)
    assert FleetPaths("/w").proxy_args("h", "1", px)[0] == "proxy"


# -- registry records: what is wrong, said once ------------------------------------------


def test_parse_records_says_what_is_wrong_without_echoing_secrets_or_newlines():
    from biofleet.registry import parse_records

    good = '{"fleet":"f","server":"a","url":"http://127.0.0.1:1","served_names":["x"]}'
    texts = [good, "{nope", "[" * 5000 + "]" * 5000,
             '{"fleet":"f","server":"b","url":"http://root:hunter2@127.0.0.1:1","served_names":["x"]}',
             '{"fleet":"f","server":"c\\r\\nFAKE","url":"http://127.0.0.1:1","served_names":["x"]}']
    problems: list[str] = []
    records, bad = parse_records(texts, problems)
    assert [r.server for r in records] == ["a"] and bad == 4 and len(problems) == 4
    assert problems[0].startswith("not JSON") and problems[1] == "not JSON (nested too deeply)"
    assert "server 'b': url:" in problems[2] and "hunter2" not in problems[2] and "//***@" in problems[2]
    assert "server" in problems[3] and "\r" not in problems[3] and "\n" not in problems[3]
    assert parse_records(texts) == (records, 4)  # the old two-value form still works
