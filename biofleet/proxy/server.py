"""Run the proxy with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import logging

from biofleet.proxy.config import ProxyConfig


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
        access_log=False,  # our own log lines never carry bodies or credentials
        server_header=False,
        timeout_keep_alive=30,
        lifespan="on",
    )


def serve(config: ProxyConfig, *, log_level: str = "info") -> None:
    """The library entry point behind ``biofleet proxy``."""
    run(config, log_level=log_level)
