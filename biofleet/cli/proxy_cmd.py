"""``biofleet proxy``: one OpenAI-compatible endpoint in front of the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def proxy(
    registry: Annotated[Path | None, typer.Option(
        "--registry", help="Fleet registry directory to discover backends from.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help="Static backend NAME=URL (served name NAME); repeatable, and the same NAME with "
        "another URL is one more replica.")] = None,
    routing: Annotated[Path | None, typer.Option(
        "--routing", help="YAML file with a routing section (default, aliases, tasks, fallbacks, ...).")] = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on; anything but loopback needs --token-file.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding the token clients must send as 'Authorization: Bearer'.")] = None,
    backend_key_file: Annotated[Path | None, typer.Option(
        "--backend-key-file", help="File holding the backends' API key (vLLM --api-key).")] = None,
    strategy: Annotated[str, typer.Option(help="least-outstanding or round-robin.")] = "least-outstanding",
    elastic: Annotated[Path | None, typer.Option(
        "--elastic", help="The fleet's elastic plan (<fleet dir>/elastic.json, written by biofleet up): this proxy "
        "then holds requests for elastic servers with no ready replica and submits/cancels their replicas "
        "with the load. Needs sbatch/squeue/scancel where the proxy runs.")] = None,
    connect_timeout: Annotated[float | None, typer.Option(
        help="Seconds to connect to a backend [default: 3].")] = None,
    first_byte_timeout: Annotated[float | None, typer.Option(
        help="Seconds a non-streaming request may wait for its answer, i.e. the whole generation "
        "[default: 600].")] = None,
    stream_first_byte_timeout: Annotated[float | None, typer.Option(
        help="Seconds a streaming request may wait for its first event [default: 120].")] = None,
    idle_timeout: Annotated[float | None, typer.Option(
        help="Seconds of silence allowed between chunks of an answer [default: 60].")] = None,
    deep_probe: Annotated[bool | None, typer.Option(
        "--deep-probe/--no-deep-probe",
        help="Now and then a one-token completion to each idle backend, to catch an engine that hangs while its "
        "/health says ok [default: off].")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="Open client connections; past it new ones get 503 with Retry-After [default: 1024].")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the fleet's models behind one OpenAI-compatible endpoint.

    Examples:

      biofleet proxy --registry ~/.biofleet/fleets/demo/registry

      biofleet proxy --backend coder=http://127.0.0.1:8001 --backend math=http://127.0.0.1:8002 --port 8080

      biofleet proxy --backend coder=http://10.0.0.5:8001 --backend coder=http://10.0.0.6:8001  (two replicas)
    """
    from pydantic import ValidationError

    from biofleet.errors import validation_message
    from biofleet.proxy.config import ProxyConfig, load_routing_file, parse_backend_args

    if registry is not None and not registry.is_dir():
        # biofleet up makes <fleet dir>/registry before it submits the proxy, so a missing one is a wrong path:
        # served, it would discover nothing and answer 503 to every request without saying why
        typer.echo(f"error: --registry {registry}: no such directory (biofleet up creates it as "
                   "<cluster.workdir>/<fleet name>/registry)", err=True)
        raise typer.Exit(2)
    try:
        backends = parse_backend_args(backend or [])
        fields: dict = {
            "registry_dir": registry, "backends": backends, "host": host, "port": port,
            "token_file": token_file, "backend_api_key_file": backend_key_file, "strategy": strategy,
            "elastic_plan": elastic,
        }
        tuning = {"connect_timeout_s": connect_timeout, "first_byte_timeout_s": first_byte_timeout,
                  "stream_first_byte_timeout_s": stream_first_byte_timeout, "idle_timeout_s": idle_timeout,
                  "deep_probe": deep_probe, "max_client_connections": max_connections}
        fields.update({k: v for k, v in tuning.items() if v is not None})
        if routing is not None:
            fields["routing"] = load_routing_file(routing)
        config = ProxyConfig(**fields)
        if token_file is not None:
            config.resolved_token()  # fail now, not at the first request
        if elastic is not None:
            from biofleet.elastic.state import ElasticPlan
            from biofleet.remote.base import read_local_text

            ElasticPlan.model_validate_json(read_local_text(str(elastic)))  # fail now, not in the background
    except ValidationError as exc:
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            typer.echo(f"error: {path + ': ' if path else ''}{validation_message(err)}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    from biofleet.proxy.server import serve

    serve(config, log_level=log_level)
