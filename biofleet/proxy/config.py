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
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


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
    url: str = Field(pattern=r"^https?://")  # base URL without /v1
    served_names: tuple[str, ...] = Field(min_length=1)
    kind: Literal["generate", "embed"] = "generate"


class ProxyConfig(_Frozen):
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    registry_dir: Path | None = None
    backends: dict[str, StaticBackend] = Field(default_factory=dict)  # name -> backend
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
    connect_timeout_s: float = Field(3.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)  # idle read timeout on the upstream
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_inflight_per_backend: int | None = Field(None, gt=0)  # beyond: saturated (429)
    scrape_metrics: bool = True
    elastic_plan: Path | None = None  # <fleet>/elastic.json: elastic servers this proxy scales (biofleet.elastic)

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
            tok = self.token_file.read_text().strip()
            if not tok:
                raise ValueError(f"token file {self.token_file} is empty")
            return tok
        return None

    def resolved_backend_key(self) -> str | None:
        if self.backend_api_key_file is None:
            return None
        return self.backend_api_key_file.read_text().strip() or None


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
        raise ValueError(f"--backend {text!r}: expected NAME=URL, e.g. coder=http://127.0.0.1:8001")
    return name, StaticBackend(url=url, served_names=(name,))
