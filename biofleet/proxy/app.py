"""The proxy as an ASGI app: :func:`build_app` is the factory.

The three OpenAI POST routes are served by a lean raw-ASGI path (no
middleware, no Request object, the body forwarded as received when its
``model`` needs no rewrite); everything else (``/v1/models``, ``/health``,
``/metrics``, ``/admin/reload``) goes through a small Starlette app, which
also runs the lifespan: one shared ``httpx.AsyncClient``, the discovery loop
and the health prober.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from biofleet.names import shown
from biofleet.proxy import routing as R
from biofleet.proxy.config import CloudFallback, ProxyConfig, RoutingConfig
from biofleet.proxy.discovery import (
    Backend,
    BackendPool,
    BackendSpec,
    DiscoveryStalled,
    Source,
    source_from_config,
)
from biofleet.proxy.health import DeepProbe, HealthChecker, Outliers
from biofleet.proxy.metrics import OTHER_MODEL, ProxyMetrics
from biofleet.proxy.transport import (
    Attempt,
    Outcome,
    RawHeaders,
    Receive,
    Scope,
    Send,
    call_json,
    error_body,
    forward_once,
    request_id,
    send_error,
    send_json,
    upstream_request_headers,
)
from biofleet.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from biofleet.elastic.controller import ElasticRuntime

log = logging.getLogger("biofleet.proxy")

# path -> (field that must be present, endpoint kind)
_OPENAI_POST = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}
_CLASSIFIER_TIMEOUT_S = 30.0


def make_client(config: ProxyConfig) -> httpx.AsyncClient:
    """The one upstream client of an app: keep-alive pool, no env proxies, no redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=config.connect_timeout_s, read=config.first_byte_timeout_s,
                              write=config.first_byte_timeout_s, pool=config.connect_timeout_s),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=30.0),
        trust_env=False,  # a cluster-wide HTTP_PROXY must never capture backend traffic
        follow_redirects=False,
    )


@dataclass
class CloudTarget:
    cloud: CloudFallback
    key: str | None  # read from the env var at start; None: skipped
    backend: Backend  # for in-flight accounting and metrics labels


@dataclass
class ProxyState:
    config: ProxyConfig
    source: Source
    pool: BackendPool = field(default_factory=BackendPool)
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    client: httpx.AsyncClient | None = None  # probes, classifiers, https cloud fallbacks
    upstream: UpstreamPool | None = None  # the hot path to fleet backends (plain http)
    token: bytes | None = None  # b"Bearer <token>"
    backend_key: str | None = None
    clouds: dict[str, CloudTarget] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    reload_event: asyncio.Event | None = None
    health: HealthChecker | None = None
    budget: R.RetryBudget | None = None
    outliers: Outliers | None = None
    configured: frozenset[str] = frozenset()  # served names the routing table knows
    stalled: bool = False  # the last registry read did not finish in time
    elastic: ElasticRuntime | None = None  # elastic servers: held requests and the scaling controller

    def __post_init__(self) -> None:
        c = self.config
        self.budget = R.RetryBudget(c.retry_budget_ratio, c.retry_budget_min_per_s)
        self.outliers = Outliers(self.pool, eject_after=c.eject_after, base_s=c.eject_base_s, max_s=c.eject_max_s,
                                 on_eject=self._ejected)
        self.configured = frozenset(_configured_models(c.routing))

    def _ejected(self, b: Backend, reason: str) -> None:
        self.metrics.ejected(b.key, reason)
        self.metrics.healthy.labels(b.key).set(0)
        if self.upstream is not None:
            n = self.upstream.abort_waiting(b.url)
            if n:
                log.warning("backend %s: %d request(s) waiting for it go to other replicas", b.key, n)

    # -- discovery -----------------------------------------------------------

    async def refresh(self) -> None:
        try:
            specs = await self.source.fetch()
        except DiscoveryStalled as exc:
            if not self.stalled:
                log.warning("registry read stalled: %s; serving the backends known so far", exc)
            self.stalled = True
            return
        if self.stalled:
            log.info("registry read works again")
            self.stalled = False
        added, removed = self.pool.update(specs)
        for b in removed:
            if b.key not in self.pool.backends:
                self.metrics.forget_backend(b.key)
            if self.upstream is not None and not any(o.url == b.url for o in self.pool.backends.values()):
                self.upstream.forget(b.url)
        for b in added:
            # Not routable until its first probe passes: a freshly registered
            # vLLM may still be loading weights.
            b.healthy = False
            b.ok_streak = 0
        if added and self.health is not None:
            await self.health.probe_all(added)
        for b in added:
            self.metrics.healthy.labels(b.key).set(1 if b.healthy else 0)

    def live_client(self) -> httpx.AsyncClient:
        """The shared client, which the app's lifespan opens."""
        if self.client is None:
            raise RuntimeError("the proxy's HTTP client is not open: the ASGI server must run the app's lifespan")
        return self.client

    def request_reload(self) -> None:
        if self.reload_event is not None:
            self.reload_event.set()

    def gauge(self, b: Backend) -> Gauge:
        return self.metrics.inflight_gauge(b.key)

    def model_label(self, name: object) -> str:
        """A metrics label for a model name a client sent: only names a route knows, so a
        client cannot grow /metrics by inventing names."""
        if isinstance(name, str) and (name in self.configured or name in self.pool.by_model):
            return name
        return OTHER_MODEL

    def next_cursor(self, model: str) -> int:
        c = self.cursors.get(model, 0)
        self.cursors[model] = c + 1
        return c

    # -- views -----------------------------------------------------------------

    def model_health(self) -> dict[str, dict[str, int]]:
        """Replicas per served name; a model the routing table names but no server has registered
        yet counts as down (a just-started fleet is not healthy before its servers are found)."""
        out: dict[str, dict[str, int]] = {name: {"healthy": 0, "total": 0} for name in sorted(self.configured)}
        for name, reps in self.pool.by_model.items():
            out[name] = {"healthy": sum(1 for b in reps if b.healthy), "total": len(reps)}
        return out

    def available_models(self) -> list[str]:
        healthy = [m for m, h in self.model_health().items() if h["healthy"]]
        healthy += self.elastic.names() if self.elastic is not None else []  # served even at zero replicas
        aliases = [a for a, t in self.config.routing.aliases.items() if t in healthy and a not in healthy]
        return list(dict.fromkeys(healthy + aliases))


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            gone.set()
            task.cancel()
            return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def _last_user_text(obj: dict[str, Any]) -> str:
    msgs = obj.get("messages")
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, str):
                    return c
                if isinstance(c, list):
                    return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        return ""
    p = obj.get("prompt")
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and isinstance(p[0], str):
        return p[-1]
    return ""


class ProxyApp:
    """ASGI entry point. ``state`` is the live :class:`ProxyState`; ``starlette`` the non-hot routes."""

    def __init__(self, state: ProxyState, starlette: Starlette):
        self.state = state
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            required = _OPENAI_POST.get(scope["path"])
            if required is not None:
                await self._openai(scope, receive, send, required)
                return
        await self.starlette(scope, receive, send)

    # -- auth --------------------------------------------------------------------

    def authorized(self, auth: bytes | None) -> bool:
        expected = self.state.token
        if expected is None:
            return True
        return auth is not None and hmac.compare_digest(auth, expected)

    # -- the hot path --------------------------------------------------------------

    async def _openai(self, scope: Scope, receive: Receive, send: Send, required: str) -> None:
        st = self.state
        started = time.perf_counter()
        if not self.authorized(_header(scope, b"authorization")):
            await send_error(send, 401, "missing or invalid bearer token", "invalid_api_key",
                             [(b"www-authenticate", b"Bearer")])
            return
        limit = st.config.max_body_bytes
        clen = _header(scope, b"content-length")
        if clen is not None and clen.isdigit() and int(clen) > limit:
            await send_error(send, 413, f"request body larger than {limit} bytes", "body_too_large")
            return
        try:
            body = await _read_body(receive, limit)
        except _BodyTooLarge:
            await send_error(send, 413, f"request body larger than {limit} bytes", "body_too_large")
            return
        except _ClientGone:
            return
        try:
            obj = json.loads(body)
        except ValueError as exc:
            await send_error(send, 400, f"request body is not valid JSON: {exc}", "invalid_json")
            return
        except RecursionError:
            await send_error(send, 400, "request body is not valid JSON: nested too deeply", "invalid_json")
            return
        if not isinstance(obj, dict):
            await send_error(send, 400, "request body must be a JSON object", "invalid_json")
            return
        if required not in obj:
            await send_error(send, 400, f"missing required field {required!r}", "missing_field")
            return

        # Everything from here may take long (classifiers, upstream): watch for the
        # client going away and cancel, so in-flight counts and upstream work end.
        # One extra task per request (the watcher), not two: it cancels this one on disconnect.
        me = asyncio.current_task()
        if me is None:  # an ASGI server runs every request in a task
            raise RuntimeError("a proxy request must run inside an asyncio task")
        gone = asyncio.Event()
        watch = asyncio.ensure_future(_cancel_on_disconnect(receive, me, gone))
        try:
            await self._route_and_forward(scope, send, obj, body, required, started)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise  # cancelled from outside (server shutdown): not ours to swallow
            if hasattr(me, "uncancel"):  # Python >= 3.11 counts cancellations
                me.uncancel()
            log.info("client disconnected; request cancelled")
        finally:
            watch.cancel()

    async def _route_and_forward(self, scope: Scope, send: Send, obj: dict[str, Any], body: bytes,
                                 required: str, started: float) -> None:
        st = self.state
        cfg = st.config
        routing = cfg.routing
        try:
            served = await self._decide(obj, required)
        except R.RouteError as exc:
            st.metrics.errors.labels(st.model_label(obj.get("model")), exc.code).inc()
            await send_error(send, exc.status, exc.message, exc.code)
            return

        if routing.safety is not None and required != "input":
            blocked = await self._safety_check(obj, send)
            if blocked:
                return

        if st.elastic is not None:  # an elastic server with no ready replica: hold the request (biofleet.elastic)
            admitted = await st.elastic.admit(served, obj.get("stream") is True, send)
            if admitted is None:
                return  # answered (503 with the reason)
            send = admitted

        rid = request_id(scope["headers"])
        base_headers = [(k, v) for k, v in scope["headers"]]
        up_headers = upstream_request_headers(base_headers, rid, st.backend_key)
        path = scope["path"]
        strip_task = "task_type" in obj
        stream = obj.get("stream") is True
        first_byte = cfg.stream_first_byte_timeout_s if stream else cfg.first_byte_timeout_s
        budget = st.budget
        outliers = st.outliers
        assert budget is not None and outliers is not None
        budget.request()

        def body_for(model: str) -> bytes:
            # Forward the client's bytes untouched whenever we can: re-serialising
            # costs time on every request and could change number formatting.
            if obj.get("model") == model and not strip_task:
                return body
            out = dict(obj)
            out["model"] = model
            out.pop("task_type", None)
            return json.dumps(out, ensure_ascii=False).encode()

        chain = R.fallback_chain(served, routing)
        saturated = False
        last = 0  # the status of the last failed attempt (502 broken, 503, 504 timeout...)
        out_of_budget = poisoned = False
        reasons: list[str] = []
        # Replicas that answered 500 to this request or timed out on it (504). Such a failure counts toward a
        # replica's ejection only once another replica answers the same request: a second one makes the request the
        # likely cause (a client on a shared fleet must not be able to eject replicas by sending what makes every
        # engine fail, or run past the timeout). Broken connections and 502 / 503 answers count at once.
        request_failures: list[tuple[Backend, str]] = []
        attempts = 0
        for i, model in enumerate(chain):
            if i > 0 and not st.pool.replicas(model):
                continue
            tried: set[Backend] = set()
            payload: bytes | None = None
            while True:
                reps = [b for b in st.pool.replicas(model) if b not in tried]
                b = R.pick_backend(reps, cfg.strategy, st.next_cursor(model), cfg.max_inflight_per_backend)
                if b is None:
                    if cfg.max_inflight_per_backend is not None and any(
                        r.healthy and r.inflight >= cfg.max_inflight_per_backend for r in reps
                    ):
                        saturated = True
                    break
                if attempts:
                    if not budget.spend():
                        out_of_budget = True
                        break
                    st.metrics.retries.labels(model).inc()
                attempts += 1
                tried.add(b)
                if payload is None:
                    payload = body_for(model)
                # may another replica take it if this one fails? (then a 500/504 or a timeout is not passed on)
                may_retry = len(reps) > 1 and budget.can_retry() and any(
                    r is not b and r.healthy and not r.removed for r in reps)
                res = await forward_once(
                    st.live_client(),
                    Attempt(b, b.url + path, payload, up_headers, model, rid, started, stream, first_byte,
                            cfg.idle_timeout_s, may_retry),
                    send, st.metrics, st.gauge(b), st.upstream,
                )
                if res.failed and res.status in (500, 504):
                    request_failures.append((b, res.reason or f"answered {res.status}"))
                elif res.failed:
                    outliers.failure(b, res.reason or f"answered {res.status}")
                elif res.status and res.status < 500:
                    outliers.success(b)
                    for other, why in request_failures:
                        outliers.failure(other, why)
                    request_failures.clear()
                if res.outcome is Outcome.DONE:
                    if i > 0:
                        st.metrics.fallbacks.labels(served, model).inc()
                    return
                last = res.status or last
                reasons.append(res.reason)
                if len({id(other) for other, _ in request_failures}) >= 2:
                    poisoned = True
                    reasons.append("two replicas failed this request (500 or a timeout), so it is likely the "
                                   "request: not retried further, and no replica is charged for it")
                    break
            if out_of_budget or poisoned:
                break

        if not out_of_budget and not poisoned:
            for cloud_model, target in self._cloud_targets(chain):
                if attempts and not budget.spend():
                    out_of_budget = True
                    break
                attempts += 1
                cloud = target.cloud
                payload = json.dumps({**{k: v for k, v in obj.items() if k != "task_type"},
                                      "model": cloud_model}).encode()
                headers = upstream_request_headers(base_headers, rid, target.key)
                url = cloud.base_url.rstrip("/") + path[len("/v1"):]
                res = await forward_once(
                    st.live_client(),
                    Attempt(target.backend, url, payload, headers, cloud_model, rid, started, stream, first_byte,
                            cfg.idle_timeout_s),
                    send, st.metrics, st.gauge(target.backend),
                )
                if res.outcome is Outcome.DONE:
                    st.metrics.fallbacks.labels(served, f"cloud:{cloud.name}").inc()
                    return
                last = res.status or last
                reasons.append(res.reason)

        if out_of_budget:
            reasons.append("retry budget used up: the fleet is failing too often to retry every request")
        detail = f" ({'; '.join(reasons[-3:])})" if reasons else ""
        if saturated:
            st.metrics.errors.labels(served, "saturated").inc()
            await send_error(send, 429, f"every replica of {served!r} is at capacity; retry shortly{detail}",
                             "saturated", [(b"retry-after", b"1")])
        elif last == 504:
            st.metrics.errors.labels(served, "timeout").inc()
            await send_error(send, 504, f"no replica of {served!r} answered in time{detail}", "upstream_timeout")
        elif last in (500, 502):
            st.metrics.errors.labels(served, "upstream_broken").inc()
            await send_error(send, 502, f"the upstream answer for {served!r} failed, broke off or was a bad "
                             f"gateway, and no other replica answered{detail}", "upstream_broken")
        else:
            st.metrics.errors.labels(served, "unavailable").inc()
            await send_error(send, 503, f"no healthy replica of {served!r} or its fallbacks{detail}",
                             "no_healthy_backend", [(b"retry-after", b"5")])

    def _cloud_targets(self, chain: list[str]) -> list[tuple[str, CloudTarget]]:
        out = []
        for cloud, cloud_model in R.cloud_targets(chain, self.state.config.routing):
            t = self.state.clouds.get(cloud.name)
            if t is not None and t.key:
                out.append((cloud_model, t))
        return out

    async def _decide(self, obj: dict[str, Any], required: str) -> str:
        """The served model name this request goes to."""
        st = self.state
        routing = st.config.routing
        task = obj.get("task_type")
        model = obj.get("model")
        if task is not None:
            if not isinstance(task, str):
                raise R.RouteError(400, "task_type must be a string", "invalid_task_type")
            return R.model_for_task(task, routing)
        if model is None:
            raise R.RouteError(400, "missing required field 'model'", "missing_field")
        if not isinstance(model, str):
            raise R.RouteError(400, "model must be a string", "invalid_model")
        if model == R.AUTO:
            return await self._auto(obj, required)
        served = R.resolve_alias(model, routing)
        if served in st.pool.by_model or served in st.configured:
            return served
        names = sorted(st.available_models())
        available = ", ".join(names[:20]) + (f" and {len(names) - 20} more (GET /v1/models)" if len(names) > 20 else "")
        raise R.RouteError(404, f"The model {shown(model)} does not exist here; available models: "
                           f"{available or '(none)'}", "model_not_found")

    async def _auto(self, obj: dict[str, Any], required: str) -> str:
        routing = self.state.config.routing
        if required == "input":  # embeddings: there is nothing to classify
            target = routing.tasks.get("embedding") or routing.default
        else:
            text = _last_user_text(obj)
            task = None
            if routing.intent_model and routing.tasks:
                task = await self._ask_intent(text)
            if task is None and routing.rules:
                task = R.classify_by_rules(text, routing.rules)
            target = routing.tasks.get(task) if task else None
            if target is None and task is not None:
                target = task if task in self.state.pool.by_model else None
            target = target or routing.default
        if target is None:
            raise R.RouteError(400, "model 'auto' could not be routed: configure routing.default, "
                               "routing.rules or routing.intent_model", "auto_unroutable")
        return target

    async def _classify(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> str | None:
        """Ask a local classifier model; the reply text, or None if no replica answered."""
        st = self.state
        tried: set[Backend] = set()
        while True:
            reps = [b for b in st.pool.replicas(model) if b not in tried]
            b = R.pick_backend(reps, st.config.strategy, st.next_cursor(model))
            if b is None:
                return None
            tried.add(b)
            headers: RawHeaders = [(b"content-type", b"application/json")]
            if st.backend_key:
                headers.append((b"authorization", b"Bearer " + st.backend_key.encode()))
            b.inflight += 1
            try:
                data = await call_json(
                    st.live_client(), f"{b.url}/v1/chat/completions",
                    {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0},
                    headers, _CLASSIFIER_TIMEOUT_S,
                )
                return str(data["choices"][0]["message"]["content"] or "")
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                b.mark_down(f"connect failed: {type(exc).__name__}")
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                log.warning("classifier %s on %s failed: %s", model, b.key, type(exc).__name__)
            finally:
                b.inflight -= 1

    async def _ask_intent(self, text: str) -> str | None:
        routing = self.state.config.routing
        assert routing.intent_model is not None
        reply = await self._classify(
            routing.intent_model,
            [{"role": "user", "content": R.intent_prompt(text, routing.tasks)}],
            max_tokens=20,
        )
        return None if reply is None else R.parse_intent_reply(reply, routing.tasks)

    async def _safety_check(self, obj: dict[str, Any], send: Send) -> bool:
        """True when the request was blocked (and the client already answered)."""
        safety = self.state.config.routing.safety
        assert safety is not None
        text = _last_user_text(obj)
        reply = await self._classify(safety.model, [{"role": "user", "content": text}], max_tokens=20)
        if reply is None:
            if safety.fail == "open":
                log.warning("safety model %s unavailable; request let through (fail: open)", safety.model)
                return False
            await send_error(send, 503, f"safety model {safety.model!r} is unavailable and safety.fail is "
                             "'closed'", "safety_unavailable", [(b"retry-after", b"5")])
            return True
        verdict = R.parse_safety_reply(reply)
        if verdict.safe:
            return False
        names = [f"{c} ({safety.categories[c]})" if c in safety.categories else c for c in verdict.categories]
        self.state.metrics.errors.labels(safety.model, "blocked").inc()
        await send_json(send, 400, error_body(
            400, f"request blocked by the safety check: {', '.join(names) or 'unsafe'}", "content_blocked"))
        return True


def build_app(
    config: ProxyConfig,
    *,
    source: Source | None = None,
    client_factory: Callable[[ProxyConfig], httpx.AsyncClient] = make_client,
    environ: dict[str, str] | None = None,
) -> ProxyApp:
    """A ready-to-serve proxy for ``config``. Secrets (token, backend key, cloud keys) are read here."""
    env = os.environ if environ is None else environ
    token = config.resolved_token()
    state = ProxyState(
        config=config,
        source=source or source_from_config(config),
        token=("Bearer " + token).encode() if token else None,
        backend_key=config.resolved_backend_key(),
    )
    for cloud in config.routing.cloud_fallbacks:
        key = env.get(cloud.api_key_env) or None
        if key is None:
            log.warning("cloud fallback %s disabled: environment variable %s is not set", cloud.name, cloud.api_key_env)
        spec = BackendSpec(key=f"cloud:{cloud.name}", url=cloud.base_url.rstrip("/"), served_names=("cloud",))
        state.clouds[cloud.name] = CloudTarget(cloud, key, Backend(spec))
    if config.elastic_plan is not None:
        from biofleet.elastic.controller import ElasticRuntime

        state.elastic = ElasticRuntime.from_file(config.elastic_plan, state.pool, state.metrics.registry)
        state.configured |= frozenset(state.elastic.names())  # known (not 404) even with no replica

    def admin_ok(request: Request) -> bool:
        if state.token is None:
            # No token configured means loopback-only (ProxyConfig enforces it);
            # still refuse reloads from anywhere but this machine.
            host = request.client.host if request.client else ""
            return host in ("127.0.0.1", "::1", "localhost", "testclient")
        return app.authorized(request.headers.get("authorization", "").encode())

    def unauthorized() -> Response:
        return Response(error_body(401, "missing or invalid bearer token", "invalid_api_key"), 401,
                        media_type="application/json", headers={"www-authenticate": "Bearer"})

    async def models(request: Request) -> Response:
        if not app.authorized(bearer(request)):
            return unauthorized()
        now = int(time.time())
        data = [{"id": m, "object": "model", "created": now, "owned_by": "biofleet"} for m in state.available_models()]
        return JSONResponse({"object": "list", "data": data})

    def bearer(request: Request) -> bytes | None:
        return request.headers.get("authorization", "").encode() or None

    async def health(request: Request) -> Response:
        per_model = state.model_health()
        # an elastic server at zero replicas is not down: its requests are held while one starts
        down = sorted(m for m, h in per_model.items() if h["healthy"] == 0
                      and not (state.elastic is not None and state.elastic.serves(m)))
        ok = bool(per_model) and not down
        if not app.authorized(bearer(request)):
            # Anyone on the network may ask whether the proxy is up; which models, servers and
            # jobs it routes to is for token holders (a neighbour learns nothing to aim at).
            return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "models": per_model,
                                # which registered servers it routes to (keys only, never addresses):
                                # `up --renew` drains old tasks only once their replacements are in here
                                "backends": {k: b.healthy for k, b in state.pool.backends.items()}}
        if down:
            body["down"] = down
        if not per_model:
            body["message"] = "no backends discovered"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        if not app.authorized(bearer(request)):
            return unauthorized()  # Prometheus sends the token with `authorization: {credentials_file: ...}`
        for b in state.pool.backends.values():
            state.metrics.healthy.labels(b.key).set(1 if b.healthy else 0)
            state.metrics.upstream_waiting.labels(b.key).set(b.waiting)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def reload(request: Request) -> Response:
        if not admin_ok(request):
            return unauthorized()
        await state.refresh()  # bounded: a registry read that hangs leaves the pool as it was
        body: dict[str, Any] = {"backends": len(state.pool.backends), "models": sorted(state.pool.by_model)}
        if state.stalled:
            body["stalled"] = True
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.client = client_factory(config)
        state.upstream = UpstreamPool(connect_timeout=config.connect_timeout_s,
                                      read_timeout=config.first_byte_timeout_s)
        state.reload_event = asyncio.Event()
        deep = (DeepProbe(state.client, timeout_s=config.deep_probe_timeout_s, api_key=state.backend_key)
                if config.deep_probe else None)
        state.health = HealthChecker(
            state.client, lambda: list(state.pool.backends.values()),
            interval_s=config.probe_interval_s, timeout_s=config.probe_timeout_s,
            readmit_after=config.readmit_after, scrape_metrics=config.scrape_metrics,
            on_change=lambda b: state.metrics.healthy.labels(b.key).set(1 if b.healthy else 0),
            deep=deep, deep_interval_s=config.deep_probe_interval_s, outliers=state.outliers,
        )
        try:
            await state.refresh()
        except Exception:
            log.exception("initial discovery failed; retrying in the background")
        tasks = [asyncio.create_task(_discovery_loop(state)), asyncio.create_task(state.health.run())]
        if deep is not None:
            tasks.append(asyncio.create_task(state.health.run_deep()))
        if state.elastic is not None:
            tasks.append(asyncio.create_task(state.elastic.run()))
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, _on_sighup, state)  # only in the main thread
            hup = True
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.client.aclose()
            await state.upstream.aclose()

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 (an unknown path or method), in the OpenAI error shape
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {shown(request.url.path, 60)}", 405: "method not allowed"}.get(status, "error")
        return Response(error_body(status, message), status, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    starlette = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/reload", reload, methods=["POST"]),
        ],
        exception_handlers={404: http_error, 405: http_error},
        lifespan=lifespan,
    )
    app = ProxyApp(state, starlette)
    return app


def _configured_models(routing: RoutingConfig) -> set[str]:
    """Served names the routing table knows, so a model whose replicas have not
    registered yet answers 503 (come back later) rather than 404 (no such model)."""
    names = set(routing.tasks.values()) | set(routing.aliases.values()) | set(routing.fallbacks)
    for chain in routing.fallbacks.values():
        names.update(chain)
    for c in routing.cloud_fallbacks:
        names.update(c.models)
    if routing.default:
        names.add(routing.default)
    return names


def _on_sighup(state: ProxyState) -> None:
    log.info("SIGHUP: reloading the registry now")
    state.request_reload()


async def _discovery_loop(state: ProxyState) -> None:
    assert state.reload_event is not None
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.reload_event.wait(), state.config.discovery_interval_s)
        state.reload_event.clear()
        try:
            await state.refresh()
        except Exception:
            log.exception("discovery failed")
