"""``biofleet fit-check``: will this plan start on these GPUs?"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from biofleet.cli.output import console, print_json

EXIT_FITS, EXIT_WOULD_FAIL = 0, 1


def fit_check(
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Shipped profile name or YAML path.")] = None,
    model: Annotated[Optional[str], typer.Option(help="One server, no profile: catalogue name, hub id or a directory with config.json.")] = None,
    gpu: Annotated[Optional[str], typer.Option(help="GPU from the catalogue (T4, L4, A100-80GB, H100, ...).")] = None,
    gpu_memory_gib: Annotated[Optional[float], typer.Option(help="A GPU the catalogue lacks: its memory in GiB.")] = None,
    compute_capability: Annotated[Optional[str], typer.Option(help="A GPU the catalogue lacks: compute capability, e.g. 8.6.")] = None,
    gpus_on_node: Annotated[int, typer.Option(help="GPUs on the node (for tensor parallelism).")] = 1,
    max_model_len: Annotated[Optional[int], typer.Option(help="Context length to plan for (default: the model's).")] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="Fraction of GPU memory this server may use.")] = 0.9,
    dtype: Annotated[str, typer.Option(help="auto, float16, bfloat16 or float32.")] = "auto",
    quantization: Annotated[Optional[str], typer.Option(help="awq, gptq, fp8, bitsandbytes, ...")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs one server is split across.")] = 1,
    kv_cache_dtype: Annotated[str, typer.Option(help="auto or fp8 (halves KV memory).")] = "auto",
    enforce_eager: Annotated[bool, typer.Option(help="No CUDA graphs (saves their memory).")] = False,
    max_num_seqs: Annotated[Optional[int], typer.Option(help="Concurrent sequences vLLM schedules.")] = None,
    kind: Annotated[str, typer.Option(help="generate or embed.")] = "generate",
    online: Annotated[bool, typer.Option(help="Fetch unknown models' config.json from the hub (cached).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output only.")] = False,
) -> None:
    """Check every GPU's memory plan and vLLM's rules before anything is submitted.

    Exit code: 0 fits, 1 something would fail on the node, 2 the profile itself is invalid.

    Examples:

      biofleet fit-check --profile t4x10

      biofleet fit-check --model Qwen/Qwen2.5-Coder-7B-Instruct --gpu T4 --max-model-len 8192 --gpu-memory-utilization 0.85 --dtype float16 --json
    """
    from biofleet.errors import ProfileError, ProfileIssue

    if profile and model:
        raise ProfileError([ProfileIssue(None, None, "", "give either --profile or --model, not both")])
    if profile:
        from biofleet.fitcheck import check
        from biofleet.plan import fit_inputs
        from biofleet.profile import load_profile

        p = load_profile(profile)
        report = check(fit_inputs(p, allow_network=online))
        title = f"fit-check {p.name}"
    elif model:
        report = _single(model, gpu, gpu_memory_gib, compute_capability, gpus_on_node, max_model_len,
                         gpu_memory_utilization, dtype, quantization, tensor_parallel_size, kv_cache_dtype,
                         enforce_eager, max_num_seqs, kind, online)
        title = f"fit-check {model}"
    else:
        raise ProfileError([ProfileIssue(None, None, "", "give --profile NAME|FILE, or --model M with --gpu G "
                                         "(see biofleet fit-check --help)")])
    if json_out:
        print_json(report.to_json_dict())
    else:
        show_report(report, title)
    raise typer.Exit(EXIT_FITS if report.ok else EXIT_WOULD_FAIL)


def _single(model, gpu, mem, cc, gpus_on_node, max_len, util, dtype, quant, tp, kv_dtype, eager, seqs, kind, online):
    from pydantic import ValidationError

    from biofleet.catalog.gpus import UnknownGpuError, custom_gpu, get_gpu
    from biofleet.catalog.models import UnknownModelError, get_model
    from biofleet.errors import ProfileError, ProfileIssue
    from biofleet.fitcheck import ServerInput, check_server_on_gpu

    try:
        if gpu:
            g = get_gpu(gpu)
        elif mem and cc:
            g = custom_gpu(mem, cc)
        else:
            raise ProfileError([ProfileIssue(None, None, "--gpu", "give --gpu NAME, or --gpu-memory-gib X with --compute-capability M.N")])
        spec = get_model(model, allow_network=online)
        server = ServerInput(
            name=model.rstrip("/").split("/")[-1], model=spec, kind=kind, dtype=dtype, quantization=quant,
            max_model_len=max_len, gpu_memory_utilization=util, tensor_parallel_size=tp,
            kv_cache_dtype=kv_dtype, enforce_eager=eager, max_num_seqs=seqs,
        )
    except (UnknownGpuError, UnknownModelError) as exc:
        raise ProfileError([ProfileIssue(None, None, "--gpu" if isinstance(exc, UnknownGpuError) else "--model",
                                         str(exc.args[0] if exc.args else exc))]) from None
    except ValidationError as exc:
        raise ProfileError([ProfileIssue(None, None, f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}", e["msg"])
                            for e in exc.errors()]) from None
    return check_server_on_gpu(server, g, gpus_on_node=gpus_on_node)


_SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def _bar(parts: list[tuple[float, str]], total: float, width: int = 14) -> str:
    """A memory bar: weights / overhead / KV / free, proportional to the GPU's memory."""
    out, used = [], 0
    for gib, style in parts:
        n = max(0, min(width - used, round(width * gib / total))) if total else 0
        out.append(f"[{style}]{'█' * n}[/{style}]")
        used += n
    out.append("[dim]" + "·" * (width - used) + "[/dim]")
    return "".join(out)


def show_report(report, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    verdict = "[bold green]fits[/bold green]" if report.ok else "[bold red]would fail[/bold red]"
    out.print(f"[bold]{title}[/bold]: {verdict}")
    by_name = {s.name: s for s in report.servers}
    for g in report.gpus:
        out.print()
        head = f"[bold]{escape(g.node)}[/bold] GPU {g.index} ({g.gpu}, {g.visible_gib:.1f} GiB visible), util sum {g.util_sum:.2f}"
        out.print(head)
        table = Table(box=None, pad_edge=False, show_header=True)
        # GiB columns; "seqs" = full max_model_len sequences the KV cache holds at once.
        for col in ("server", "budget", "weights", "other", "KV", "tokens", "seqs", "memory"):
            table.add_column(col, justify="left" if col in ("server", "memory") else "right", no_wrap=True)
        for name in g.servers:
            s = by_name.get(name)
            if s is None:
                continue
            mark = "[green]ok[/green]" if s.ok else "[red]FAIL[/red]"
            bar = _bar([(s.weights_gib, "blue"), (s.overhead_gib, "magenta"), (max(s.kv_cache_gib, 0), "green")],
                       g.visible_gib)
            table.add_row(
                f"{mark} {escape(name)}", f"{s.budget_gib:.2f}", f"{s.weights_gib:.2f}", f"{s.overhead_gib:.2f}",
                f"{s.kv_cache_gib:.2f}", f"{s.kv_cache_tokens:,}",
                f"{s.max_concurrency:.1f}" if s.max_concurrency is not None else "-", bar,
            )
        out.print(table)
        for f in g.findings:
            _finding(out, f)
        for name in g.servers:
            s = by_name.get(name)
            for f in s.findings if s else ():
                _finding(out, f, prefix=f"{name}: ")
    for f in report.findings:
        _finding(out, f)
    out.print()
    out.print("[dim]GiB as CUDA reports them. budget = util x visible; other = activations + CUDA graphs + context;\n"
              "seqs = full-length sequences the KV cache holds. memory: [blue]█[/blue] weights "
              "[magenta]█[/magenta] other [green]█[/green] KV · free[/dim]")


def _finding(out, f, prefix: str = "") -> None:
    from rich.markup import escape

    style = _SEV_STYLE.get(f.severity, "")
    out.print(f"  [{style}]{f.severity}[/{style}] {escape(prefix + f.message)} [dim]({f.code})[/dim]")
    if f.fix:
        out.print(f"    fix: {escape(f.fix)}")
