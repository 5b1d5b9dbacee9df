"""``biofleet profiles list|show``."""

from __future__ import annotations

from typing import Annotated

import typer

from biofleet.cli.output import console, print_json

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

    rows = []
    for path in shipped_profiles():
        try:
            s = summarize(load_profile(path), str(path))
        except ProfileError as exc:
            rows.append({"name": path.stem, "path": str(path), "error": str(exc)})
            continue
        rows.append({"name": s.name, "path": s.path, "gpus": s.gpus, "servers": s.servers,
                     "usd_per_month": s.usd_per_month})
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("profile", "GPUs", "servers", "est. $/month", "path"):
        table.add_column(col, justify="right" if col in ("servers", "est. $/month") else "left")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], "[red]invalid[/red]", "", "", r["path"])
            continue
        gpus = " + ".join(f"{n}x {g}" for g, n in r["gpus"].items())
        table.add_row(r["name"], gpus, str(r["servers"]), f"{r['usd_per_month']:,.0f}", r["path"])
    console().print(table)


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
    rows = []
    for inst in insts:
        job = p.job(inst.job)
        s = inst.spec
        rows.append({
            "node": node_label(job, inst.task), "partition": job.partition or p.cluster.partition,
            "gpu": job.gpu if isinstance(job.gpu, str) else job.gpu.name,
            "gpus": list(inst.gpus), "server": inst.name, "served_name": inst.served_name,
            "model": s.model, "kind": s.kind, "engine": s.engine, "dtype": s.dtype,
            "quantization": s.quantization, "gpu_memory_utilization": s.gpu_memory_utilization,
            "tensor_parallel_size": s.tensor_parallel_size, "max_model_len": s.max_model_len,
            "port": s.port or "auto",
        })
    summary = summarize(p)
    if json_out:
        print_json({"name": p.name, "description": p.description, "gpus": summary.gpus,
                    "usd_per_month": summary.usd_per_month, "servers": rows,
                    "routing": p.routing.model_dump(mode="json"), "tasks": p.task_table()})
        return
    from rich.table import Table

    out = console()
    out.print(f"[bold]{p.name}[/bold]  {p.description}".rstrip())
    table = Table(box=None, pad_edge=False)
    for col in ("node", "GPU", "server", "model", "dtype", "quant", "util", "max_len", "TP", "port"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["node"], f"{r['gpu']}:{','.join(map(str, r['gpus']))}", r["server"],
            r["model"] + ("" if r["engine"] == "vllm" else f" ({r['engine']})")
            + (" [embed]" if r["kind"] == "embed" else ""),
            r["dtype"], r["quantization"] or "-", f"{r['gpu_memory_utilization']:.2f}",
            str(r["max_model_len"] or "model"), str(r["tensor_parallel_size"]), str(r["port"]),
        )
    out.print(table)
    tasks = p.task_table()
    if tasks:
        out.print("routing: " + ", ".join(f"{t} -> {m}" for t, m in sorted(tasks.items())))
    gpus = " + ".join(f"{n}x {g}" for g, n in summary.gpus.items())
    out.print(f"{gpus}, {len(insts)} servers, est. ${summary.usd_per_month:,.0f}/month")
