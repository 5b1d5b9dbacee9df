"""Proxy configuration: validated once, frozen, passed around as models.

:class:`RoutingConfig` is embedded verbatim as the ``routing:`` section of a
fleet profile; :class:`ProxyConfig` adds where backends come from and how the
proxy listens. Secrets are never stored in these models as plain text fields
that could end up in a log: the token is a ``SecretStr``; cloud keys are named
by environment variable and read when the proxy starts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from biofleet.errors import validation_message
from biofleet.names import check_endpoint_url, check_served_name, redact_userinfo, shown
from biofleet.remote.base import MAX_SECRET_BYTES, read_local_text


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CloudFallback(_Frozen):
    """An OpenAI-compatible cloud API used when no local replica can answer."""

    name: str = Field(min_length=1)
    base_url: str = Field(pattern=r"^https?://")  # including /v1, e.g. https://api.deepseek.com/v1
    api_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # NAME of the env var, not the key
    models: dict[str, str] = Field(default_factory=dict)  # local served name -> cloud model name


class Rule(_Frozen):
    """``model: "auto"`` without an intent model: first matching regex wins."""

    pattern: str
    task: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class Safety(_Frozen):
    """A Llama-Guard style classifier consulted before forwarding chat/completions."""

    model: str
    # closed: refuse the request when the safety model cannot be asked; open: let it through.
    fail: Literal["open", "closed"] = "closed"
    categories: dict[str, str] = Field(default_factory=dict)  # code (S1) -> readable name


class RoutingConfig(_Frozen):
    """How a request's ``model`` / ``task_type`` becomes a served model name."""

    default: str | None = None  # served name for model "auto" when nothing else decides
    aliases: dict[str, str] = Field(default_factory=dict)  # alias -> served name
    tasks: dict[str, str] = Field(default_factory=dict)  # task_type -> served name
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)  # served name -> chain
    cloud_fallbacks: list[CloudFallback] = Field(default_factory=list)
    intent_model: str | None = None  # served name of a classifier for model "auto"
    rules: list[Rule] = Field(default_factory=list)
    safety: Safety | None = None


class StaticBackend(_Frozen):
    url: Annotated[str, AfterValidator(check_endpoint_url)]  # base URL without /v1
    served_names: tuple[str, ...] = Field(min_length=1)
    kind: Literal["generate", "embed"] = "generate"


class ProxyConfig(_Frozen):
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    registry_dir: Path | None = None
    backends: dict[str, StaticBackend] = Field(default_factory=dict)  # key -> backend
    token: SecretStr | None = None
    token_file: Path | None = None
    backend_api_key_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    strategy: str = "least-outstanding"  # a name in biofleet.proxy.routing.POLICIES
    discovery_interval_s: float = Field(1.0, gt=0)
    probe_interval_s: float = Field(3.0, gt=0)
    probe_timeout_s: float = Field(2.0, gt=0)
    readmit_after: int = Field(2, ge=1)  # consecutive passing probes before an ejected backend is used
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_inflight_per_backend: int | None = Field(None, gt=0)  # beyond: saturated (429)
    scrape_metrics: bool = True
    elastic_plan: Path | None = None  # <fleet>/elastic.json: elastic servers this proxy scales (biofleet.elastic)

    # -- upstream timeouts ----------------------------------------------------------------------
    # A TCP connect inside a cluster takes milliseconds; 3 s still covers one lost SYN (Linux
    # retransmits it after 1 s) without holding a request long on a node that is gone.
    connect_timeout_s: float = Field(3.0, gt=0)
    # Not streaming, vLLM sends its status line only with the complete answer, so this bounds a
    # whole generation: 600 s is the OpenAI SDK's own default timeout, so the proxy never gives up
    # on a long generation before a default client would. A hung engine is caught sooner by
    # outlier ejection (consecutive timeouts elsewhere) and the deep probe, not by this timer.
    first_byte_timeout_s: float = Field(600.0, gt=0)
    # Streaming, the first event comes once the request left the queue and its prompt was
    # prefilled: seconds even for a 100k-token prompt on a small GPU. Two minutes without it means
    # the replica is stuck or hopelessly queued, and another replica serves the client better.
    stream_first_byte_timeout_s: float = Field(120.0, gt=0)
    # Once an answer started, tokens come every few tens of milliseconds; vLLM's preemption and
    # recompute of a long sequence pause it for seconds. A minute of silence is a stalled engine.
    idle_timeout_s: float = Field(60.0, gt=0)

    # -- passive outlier ejection (as Envoy's outlier detection) and retries --------------------
    # Consecutive 5xx answers or timeouts that take a replica out of rotation (Envoy's
    # consecutive_5xx default): one odd answer is noise, five in a row is a broken replica.
    eject_after: int = Field(5, ge=1)
    # The first ejection lasts eject_base_s, each further one twice the last, up to eject_max_s:
    # a replica that keeps failing costs less and less traffic; a replica that recovered is
    # back after 10 s. The count starts again after eject_max_s in rotation without an ejection.
    eject_base_s: float = Field(10.0, gt=0)
    eject_max_s: float = Field(300.0, gt=0)
    # Retries (on 500/502/503/504, timeouts and broken answers, before the first byte reached the
    # client) are allowed up to retry_budget_ratio of the requests of the last 10 s plus
    # retry_budget_min_per_s (Linkerd's retry budget: 20% and 10/s): a fleet-wide outage then costs
    # at most 1.2x the load instead of one extra request per replica for every request.
    retry_budget_ratio: float = Field(0.2, ge=0)
    retry_budget_min_per_s: float = Field(10.0, ge=0)
    # A one-token completion to each replica every deep_probe_interval_s when it served nothing in
    # that time: catches an engine that hangs while its /health still answers 200. Off by default
    # because it costs one tiny generation per replica per interval.
    deep_probe: bool = False
    deep_probe_interval_s: float = Field(15.0, gt=0)
    # Longer than a one-token completion waits behind a full batch; a replica that answered any
    # other request meanwhile is never called hung.
    deep_probe_timeout_s: float = Field(30.0, gt=0)

    # -- clients -------------------------------------------------------------------------------
    # Open client connections; past it a new connection gets 503 with Retry-After at once. Each
    # connection may hold one upstream connection too, so the proxy also keeps it below half its
    # descriptor limit (see biofleet.proxy.guard): failing at accept() is what this prevents.
    max_client_connections: int = Field(1024, ge=1)
    # A whole header block within 10 s (a real client sends it in one packet; nginx's
    # client_header_timeout is 60 s, shorter here because every waiting connection holds a slot).
    client_header_timeout_s: float = Field(10.0, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # a header block larger than this: 431
    # A whole request body within 30 s: 16 MiB (max_body_bytes) at 10 Mbit/s takes 13 s.
    client_body_timeout_s: float = Field(30.0, gt=0)
    # An idle kept-alive client connection is closed after 30 s: longer than the 5 s for which
    # httpx (the OpenAI SDK's client) reuses an idle connection, so the proxy never closes one as
    # the client reuses it.
    client_keepalive_s: float = Field(30.0, gt=0)

    @field_validator("strategy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from biofleet.proxy.routing import POLICIES

        if v not in POLICIES:
            raise ValueError(f"unknown routing strategy {v!r}; choose one of: {', '.join(POLICIES)}")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ProxyConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if not is_loopback(self.host) and self.token is None and self.token_file is None:
            raise ValueError(
                f"host {self.host!r} is reachable from other machines: a token (token or token_file) is required"
            )
        if self.registry_dir is None and not self.backends:
            raise ValueError("no backends: give registry_dir or at least one static backend")
        return self

    def resolved_token(self) -> str | None:
        """The client token, read from token_file when given (read once, at start)."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            tok = read_local_text(str(self.token_file), MAX_SECRET_BYTES).strip()
            if not tok:
                raise ValueError(f"token file {self.token_file} is empty")
            return tok
        return None

    def resolved_backend_key(self) -> str | None:
        if self.backend_api_key_file is None:
            return None
        return read_local_text(str(self.backend_api_key_file), MAX_SECRET_BYTES).strip() or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_routing_file(path: Path) -> RoutingConfig:
    """A YAML file holding a RoutingConfig (the same shape as a profile's ``routing:``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data, dict) and set(data) == {"routing"}:
        data = data["routing"]  # a profile-like file with only a routing: section
    return RoutingConfig.model_validate(data)


def parse_backend_arg(text: str) -> tuple[str, StaticBackend]:
    """``NAME=URL`` from the command line; the served name is NAME."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise ValueError(redact_userinfo(f"--backend {shown(text)}: expected NAME=URL, e.g. coder=http://127.0.0.1:8001"))
    try:
        check_served_name(name)
        return name, StaticBackend(url=url, served_names=(name,))
    except ValidationError as exc:
        raise ValueError(redact_userinfo(f"--backend {shown(text)}: {validation_message(exc.errors()[0])}")) from None
    except ValueError as exc:
        raise ValueError(redact_userinfo(f"--backend {shown(text)}: {exc}")) from None


def parse_backend_args(texts: Sequence[str]) -> dict[str, StaticBackend]:
    """Repeated ``--backend NAME=URL``. The same NAME with another URL is one more replica of NAME
    (keyed ``NAME``, ``NAME#2``, ...); the same NAME=URL twice is a mistake and an error."""
    out: dict[str, StaticBackend] = {}
    count: dict[str, int] = {}
    for text in texts:
        name, b = parse_backend_arg(text)
        for key, other in out.items():
            if other.served_names == b.served_names and other.url.rstrip("/") == b.url.rstrip("/"):
                raise ValueError(f"--backend {shown(redact_userinfo(text))} is given twice (as {key!r}); "
                                 f"a second replica of {shown(name)} needs its own URL")
        count[name] = count.get(name, 0) + 1
        key = name if count[name] == 1 else f"{name}#{count[name]}"
        out[key] = b
    return out
