"""``biofleet profiles list|show``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from biofleet.cli.output import console, print_json

if TYPE_CHECKING:
    from pathlib import Path

    from biofleet.errors import ProfileError
    from biofleet.plan import FleetSummary

app = typer.Typer(help="List and inspect fleet profiles (shipped ones or your own YAML files).", no_args_is_help=True)


@app.command("list")
def list_profiles(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The shipped profiles: name, path, GPUs, servers, estimated cost per month.

    Example: biofleet profiles list
    """
    from biofleet.errors import ProfileError
    from biofleet.plan import summarize
    from biofleet.profile import load_profile, shipped_profiles

    found: list[tuple[Path, FleetSummary | ProfileError]] = []
    for path in shipped_profiles():
        try:
            found.append((path, summarize(load_profile(path), str(path))))
        except ProfileError as exc:
            found.append((path, exc))
    if json_out:
        print_json([{"name": path.stem, "path": str(path), "error": str(s)} if isinstance(s, ProfileError)
                    else dataclasses.asdict(s) for path, s in found])
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("profile", "GPUs", "servers", "est. $/month", "path"):
        table.add_column(col, justify="right" if col in ("servers", "est. $/month") else "left")
    for path, s in found:
        if isinstance(s, ProfileError):
            table.add_row(path.stem, "[red]invalid[/red]", "", "", str(path))
            continue
        gpus = " + ".join(f"{n}x {g}" for g, n in s.gpus.items())
        table.add_row(s.name, gpus, str(s.servers), f"{s.usd_per_month:,.0f}", s.path)
    console().print(table)


@dataclasses.dataclass(frozen=True)
class _ServerRow:
    """One placed server as `profiles show` lists it (the --json keys, in this order)."""

    node: str
    partition: str | None
    gpu: str | None  # None: a CPU-only job
    gpus: list[int]
    server: str
    served_name: str
    model: str
    kind: str
    engine: str
    dtype: str
    quantization: str | None
    gpu_memory_utilization: float
    tensor_parallel_size: int
    max_model_len: int | str | None
    port: int | str  # "auto": picked at job start


@app.command("show")
def show(
    profile: Annotated[str, typer.Argument(help="Shipped profile name or path to a YAML file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The fleet as a table: node/GPU -> servers, model, dtype, quantisation, util, max_len, port.

    Example: biofleet profiles show t4x10
    """
    from biofleet.plan import node_label, summarize
    from biofleet.profile import load_profile

    p = load_profile(profile)
    insts = p.instances()
    rows: list[_ServerRow] = []
    for inst in insts:
        job = p.job(inst.job)
        s = inst.spec
        rows.append(_ServerRow(
            node=node_label(job, inst.task), partition=job.partition or p.cluster.partition,
            gpu=job.gpu if job.gpu is None or isinstance(job.gpu, str) else job.gpu.name,
            gpus=list(inst.gpus) if job.gpu is not None else [],  # a CPU node's server uses no GPU
            server=inst.name + (f" x{s.elastic.min}..{s.elastic.max}" if s.elastic else ""),
            served_name=inst.served_name,
            model=s.model, kind=s.kind, engine=s.engine, dtype=s.dtype,
            quantization=s.quantization, gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size, max_model_len=s.max_model_len,
            port=s.port or "auto",
        ))
    summary = summarize(p)
    if json_out:
        print_json({"name": p.name, "description": p.description, "gpus": summary.gpus,
                    "usd_per_month": summary.usd_per_month, "servers": [dataclasses.asdict(r) for r in rows],
                    "routing": p.routing.model_dump(mode="json"), "tasks": p.task_table()})
        return
    from rich.markup import escape
    from rich.table import Table

    out = console()
    out.print(f"[bold]{p.name}[/bold]  {p.description}".rstrip())
    table = Table(box=None, pad_edge=False)
    for col in ("node", "GPU", "server", "model", "dtype", "quant", "util", "max_len", "TP", "port"):
        table.add_column(col)
    for r in rows:
        model = r.model + ("" if r.engine == "vllm" else f" ({r.engine})") + (" [embed]" if r.kind == "embed" else "")
        table.add_row(
            r.node, "cpu" if r.gpu is None else f"{r.gpu}:{','.join(map(str, r.gpus))}", r.server,
            escape(model),  # rich would take "[embed]" for a markup tag and print nothing
            r.dtype, r.quantization or "-", f"{r.gpu_memory_utilization:.2f}",
            str(r.max_model_len or "model"), str(r.tensor_parallel_size), str(r.port),
        )
    out.print(table)
    tasks = p.task_table()
    if tasks:
        out.print("routing: " + ", ".join(f"{t} -> {m}" for t, m in sorted(tasks.items())))
    gpus = " + ".join(f"{n}x {g}" for g, n in summary.gpus.items()) or "no GPU"
    at_max = " at the elastic servers' max" if p.elastic_servers() else ""
    out.print(f"{gpus}, {summary.servers} servers{at_max}, est. ${summary.usd_per_month:,.0f}/month{at_max}")
