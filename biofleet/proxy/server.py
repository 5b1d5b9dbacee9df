"""Run the proxy with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import logging
from typing import Any

from biofleet.proxy.config import ProxyConfig
from biofleet.proxy.guard import ClientLimits, guarded, usable_connections


def uvicorn_options(config: ProxyConfig, *, h11: bool = False, max_connections: int | None = None) -> dict[str, Any]:
    """The uvicorn settings that bound what a client may cost (see :mod:`biofleet.proxy.guard`)."""
    limits = ClientLimits(
        max_connections=config.max_client_connections if max_connections is None else max_connections,
        header_timeout_s=config.client_header_timeout_s,
        body_timeout_s=config.client_body_timeout_s,
        max_header_bytes=config.max_header_bytes,
    )
    return {
        "http": guarded(limits, h11=h11),
        "timeout_keep_alive": config.client_keepalive_s,
        "h11_max_incomplete_event_size": config.max_header_bytes,  # h11 counts header bytes itself
        "access_log": False,  # our own log lines never carry bodies or credentials
        "server_header": False,
        "lifespan": "on",
    }


def run(config: ProxyConfig, host: str | None = None, port: int | None = None, *, log_level: str = "info") -> None:
    """Serve until interrupted. ``host``/``port`` override the config's."""
    import uvicorn

    from biofleet.proxy.app import build_app

    if host is not None or port is not None:
        config = config.model_copy(update={"host": host or config.host, "port": config.port if port is None else port})
        config = ProxyConfig.model_validate(config.model_dump())  # re-check: a public host needs a token
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        **uvicorn_options(config, max_connections=usable_connections(config.max_client_connections)),
    )


def serve(config: ProxyConfig, *, log_level: str = "info") -> None:
    """The library entry point behind ``biofleet proxy``."""
    run(config, log_level=log_level)
