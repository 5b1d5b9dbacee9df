"""A small OpenAI-compatible server that stands in for vLLM.

    python -m biofleet.devtools.mock_engine --port 8001 --served-model-name coder --kind generate

It answers the routes biofleet relies on, in vLLM's shapes: ``/health``,
``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (streaming SSE
and not), ``/v1/embeddings`` and Prometheus ``/metrics`` with vLLM's metric
names. Output is deterministic (a hash of the prompt), so tests can compare it.
Failure injection: ``--fail-rate`` answers a fraction of requests with 500, and
``POST /admin/fail`` flips the server into a dead state (``/health`` 503 and
generation 503) and back, like a vLLM whose engine died.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

_WORDS = [
    "the", "cell", "gene", "protein", "sequence", "read", "align", "variant", "sample", "expression", "model",
    "data", "pipeline", "genome", "transcript", "peak", "count", "matrix", "cluster", "marker", "pathway",
    "assay", "batch", "normalise", "filter", "quality", "score", "index", "reference", "annotate", "merge",
    "split", "sort", "call", "test", "result", "plot",
]

Reply = str | Callable[[str], str] | None


@dataclass
class MockEngineState:
    served_names: tuple[str, ...]
    kind: Literal["generate", "embed"] = "generate"
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0: all tokens at once
    fail_rate: float = 0.0
    embedding_dim: int = 384
    max_model_len: int = 4096
    max_num_seqs: int = 256
    api_key: str | None = None
    reply: Reply = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    failing: bool = False
    active: int = 0
    requests_total: int = 0
    # Like vLLM's batch: at most max_num_seqs requests are generated at once, the others wait.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(256))

    @property
    def running(self) -> int:
        return min(self.active, self.max_num_seqs)

    @property
    def waiting(self) -> int:
        return max(0, self.active - self.max_num_seqs)


def _error(status: int, message: str, type_: str = "BadRequestError", code: int | str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code if code is not None else status}},
        status_code=status,
    )


def count_tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


def generate_text(prompt: str, n_tokens: int) -> list[str]:
    """Deterministic "tokens" (words, each with a leading space) from the prompt."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [" " + rng.choice(_WORDS) for _ in range(n_tokens)]


def embed_text(text: str, dim: int) -> list[float]:
    """A deterministic unit-norm vector from a hash of the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def _prompt_of_chat(messages: Any) -> str:
    parts = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # multimodal-style parts
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def _last_user(messages: Any) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def build_app(
    served_names: Sequence[str],
    *,
    kind: Literal["generate", "embed"] = "generate",
    latency_ms: float = 0.0,
    ttft_ms: float = 0.0,
    tokens_per_s: float = 0.0,
    fail_rate: float = 0.0,
    embedding_dim: int = 384,
    max_model_len: int = 4096,
    max_num_seqs: int = 256,
    api_key: str | None = None,
    reply: Reply = None,
    seed: int = 0,
) -> Starlette:
    """The mock engine as an ASGI app; ``app.state.engine`` is its :class:`MockEngineState`.

    ``reply`` fixes the generated text: a string, or a function of the last user
    message (tests use it to play an intent or safety classifier).
    """
    if not served_names:
        raise ValueError("at least one served model name is required")
    st = MockEngineState(
        served_names=tuple(served_names), kind=kind, latency_ms=latency_ms, ttft_ms=ttft_ms,
        tokens_per_s=tokens_per_s, fail_rate=fail_rate, embedding_dim=embedding_dim,
        max_model_len=max_model_len, max_num_seqs=max_num_seqs, api_key=api_key, reply=reply,
        rng=random.Random(seed), slots=asyncio.Semaphore(max_num_seqs),
    )
    primary = st.served_names[0]
    created = int(time.time())

    def check_auth(request: Request) -> Response | None:
        if st.api_key is None:
            return None
        if request.headers.get("authorization", "") != f"Bearer {st.api_key}":
            return _error(401, "Unauthorized", "AuthenticationError", 401)
        return None

    async def read_json(request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in st.served_names:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError", 404)
        return body

    def injected_failure() -> Response | None:
        if st.failing:
            return _error(503, "engine is dead (injected)", "ServiceUnavailableError", 503)
        if st.fail_rate > 0 and st.rng.random() < st.fail_rate:
            return _error(500, "injected failure", "InternalServerError", 500)
        return None

    async def health(request: Request) -> Response:
        return Response(status_code=503 if st.failing else 200)

    async def admin_fail(request: Request) -> Response:
        on = request.query_params.get("on")
        st.failing = (not st.failing) if on is None else on in ("1", "true", "yes")
        return JSONResponse({"failing": st.failing})

    async def models(request: Request) -> Response:
        if (r := check_auth(request)) is not None:
            return r
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "biofleet-mock",
             "root": primary, "parent": None, "max_model_len": st.max_model_len}
            for n in st.served_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(request: Request) -> Response:
        label = f'{{model_name="{primary}"}}'
        kv = min(1.0, st.running / st.max_num_seqs) if st.max_num_seqs else 0.0
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(st.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(st.waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {kv}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {float(st.requests_total)}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    def make_tokens(prompt: str, last_user: str, max_tokens: int) -> tuple[list[str], str]:
        if st.reply is not None:
            text = st.reply(last_user) if callable(st.reply) else st.reply
            # keep whole words as tokens so streaming re-assembles the exact text
            toks = list(_split_keep(text))
            return toks, "stop"
        return generate_text(prompt, max_tokens), "length"

    async def generation(request: Request, chat: bool) -> Response:
        if (r := check_auth(request)) is not None:
            return r
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        if st.kind != "generate":
            return _error(400, "this model only supports embeddings")
        if not isinstance(body.get("stream_options") or {}, dict):
            return _error(400, "stream_options: must be an object")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "messages: field required")
            prompt, last_user = _prompt_of_chat(messages), _last_user(messages)
        else:
            p = body.get("prompt")
            if p is None:
                return _error(400, "prompt: field required")
            if not (isinstance(p, str) or (isinstance(p, list) and all(isinstance(x, (str, int)) for x in p))):
                return _error(400, "prompt: must be a string or a list of strings or token ids")
            prompt = p if isinstance(p, str) else " ".join(map(str, p))
            last_user = prompt
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        n_prompt = count_tokens(prompt)
        if n_prompt + max_tokens > st.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {st.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion).",
            )
        if (r := injected_failure()) is not None:
            return r
        model = body.get("model") or primary
        tokens, finish = make_tokens(prompt, last_user, max_tokens)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(tokens), "total_tokens": n_prompt + len(tokens)}
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        now = int(time.time())

        if not body.get("stream"):
            st.active += 1
            try:
                async with st.slots:
                    await _sleep_ms(st.latency_ms + st.ttft_ms)
                    if st.tokens_per_s > 0 and len(tokens) > 1:
                        await asyncio.sleep((len(tokens) - 1) / st.tokens_per_s)
            finally:
                st.active -= 1
            st.requests_total += 1
            text = "".join(tokens)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "logprobs": None, "finish_reason": finish}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                obj = "text_completion"
            return JSONResponse({"id": rid, "object": obj, "created": now, "model": model,
                                 "choices": [choice], "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            st.active += 1
            try:
                async with st.slots:
                    async for part in stream_events():
                        yield part
            finally:
                st.active -= 1

        async def stream_events() -> AsyncIterator[bytes]:
            await _sleep_ms(st.latency_ms)
            obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(choice: dict[str, Any], usage_: dict[str, int] | None = None) -> bytes:
                d: dict[str, Any] = {"id": rid, "object": obj, "created": now, "model": model,
                                     "choices": [choice] if choice else []}
                if usage_ is not None:
                    d["usage"] = usage_
                return b"data: " + json.dumps(d).encode() + b"\n\n"

            if chat:
                yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None})
            await _sleep_ms(st.ttft_ms)
            for i, tok in enumerate(tokens):
                if i and st.tokens_per_s > 0:
                    await asyncio.sleep(1.0 / st.tokens_per_s)
                last = i == len(tokens) - 1
                fr = finish if last else None
                if chat:
                    yield chunk({"index": 0, "delta": {"content": tok}, "logprobs": None, "finish_reason": fr})
                else:
                    yield chunk({"index": 0, "text": tok, "logprobs": None, "finish_reason": fr})
            if not tokens:
                yield chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"} if chat
                            else {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"})
            if include_usage:
                yield chunk({}, usage)
            yield b"data: [DONE]\n\n"
            st.requests_total += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat_completions(request: Request) -> Response:
        return await generation(request, chat=True)

    async def completions(request: Request) -> Response:
        return await generation(request, chat=False)

    async def embeddings(request: Request) -> Response:
        if (r := check_auth(request)) is not None:
            return r
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        if st.kind != "embed":
            return _error(400, "this model does not support embeddings")
        inp = body.get("input")
        if inp is None:
            return _error(400, "input: field required")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            texts = [" ".join(map(str, inp))]  # one pre-tokenised input
        elif isinstance(inp, list) and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x)) for x in inp):
            texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in inp]
        else:
            return _error(400, "input must be a string, a list of strings or a list of token-id lists")
        if (r := injected_failure()) is not None:
            return r
        await _sleep_ms(st.latency_ms)
        fmt = body.get("encoding_format") or "float"
        dim = body.get("dimensions") or st.embedding_dim
        data = []
        for i, t in enumerate(texts):
            vec = embed_text(t, dim)
            emb: Any = vec
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(count_tokens(t) for t in texts)
        st.requests_total += 1
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or primary,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/admin/fail", admin_fail, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ])
    app.state.engine = st
    return app


def _split_keep(text: str) -> list[str]:
    """Split into word tokens whose concatenation is exactly ``text``."""
    out: list[str] = []
    cur = ""
    for ch in text:
        if ch.isspace() and cur and not cur.isspace():
            out.append(cur)
            cur = ch
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m biofleet.devtools.mock_engine", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", required=True, metavar="NAME")
    p.add_argument("--kind", choices=("generate", "embed"), default="generate")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="0: emit all tokens at once")
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered with 500")
    p.add_argument("--embedding-dim", type=int, default=384)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--reply", default=None, help="fixed reply text instead of hashed words")
    p.add_argument("--api-key", default=None, help="default: $VLLM_API_KEY")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-delay-s", type=float, default=0.0,
                   help="wait this long before listening (stands in for loading a model)")
    p.add_argument("--shutdown-delay-s", type=float, default=0.0,
                   help="on SIGTERM, keep running this long before exiting (a server finishing its requests)")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    a = parse_args(argv)
    app = build_app(
        a.served_model_name, kind=a.kind, latency_ms=a.latency_ms, ttft_ms=a.ttft_ms,
        tokens_per_s=a.tokens_per_s, fail_rate=a.fail_rate, embedding_dim=a.embedding_dim,
        max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs,
        api_key=a.api_key or os.environ.get("VLLM_API_KEY") or None, reply=a.reply, seed=a.seed,
    )
    if a.startup_delay_s > 0:
        time.sleep(a.startup_delay_s)
    # When it starts listening (benchmarks measure what comes after the engine's own start-up).
    print(f"mock engine: listening on {a.host}:{a.port} at {time.time():.3f}", flush=True)
    config = uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level, access_log=False)
    if a.shutdown_delay_s > 0:
        server = _slow_stop_server_class()(config, a.shutdown_delay_s)
    else:
        server = uvicorn.Server(config)
    server.run()


def _slow_stop_server_class():
    import signal
    import threading

    import uvicorn

    class SlowStop(uvicorn.Server):
        """A server that keeps answering for a while after SIGTERM, as a vLLM finishing its requests."""

        def __init__(self, config: uvicorn.Config, delay_s: float) -> None:
            super().__init__(config)
            self.delay_s = delay_s
            self.stop_timer: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig != signal.SIGTERM:
                super().handle_exit(sig, frame)
            elif self.stop_timer is None:
                self.stop_timer = threading.Timer(self.delay_s, super().handle_exit, (sig, frame))
                self.stop_timer.daemon = True
                self.stop_timer.start()

    return SlowStop


if __name__ == "__main__":
    main()
