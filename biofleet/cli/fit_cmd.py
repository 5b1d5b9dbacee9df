"""``biofleet fit-check``: will this plan start on these GPUs?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer

from biofleet.cli.output import console, print_json

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import ValidationError
    from rich.console import Console

    from biofleet.catalog.gpus import GpuSpec
    from biofleet.errors import ProfileError
    from biofleet.fitcheck import Finding, FitReport

EXIT_FITS, EXIT_WOULD_FAIL = 0, 1


def fit_check(
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Shipped profile name or YAML path.")] = None,
    model: Annotated[str | None, typer.Option(
        help=(
            "One server, no profile: catalogue name, hub id or a directory with config.json (and "
            "safetensors)."
        ))] = None,
    gpu: Annotated[str | None, typer.Option(
        help="GPU from the catalogue (T4, L4, A100-80GB, H100, ...), or its name as nvidia-smi prints it "
             "('NVIDIA A100 80GB PCIe'; a MIG instance: 'NVIDIA A100 80GB PCIe MIG 3g.40gb').")] = None,
    gpu_visible_gib: Annotated[float | None, typer.Option(
        help=(
            "GPU memory as CUDA reports it (torch.cuda.mem_get_info()[1], vLLM's 'total_gpu_memory'): "
            "overrides the catalogue's figure, or describes a card it lacks."
        ))] = None,
    gpu_memory_gib: Annotated[float | None, typer.Option(
        help=(
            "A card the catalogue lacks, by its marketing size (visible memory estimated as x 0.93; "
            "prefer --gpu-visible-gib)."
        ))] = None,
    compute_capability: Annotated[str | None, typer.Option(
        help=(
            "A card the catalogue lacks: compute capability, e.g. 8.6."
        ))] = None,
    gpu_name: Annotated[str | None, typer.Option(
        help=(
            "A card the catalogue lacks: its device name (vLLM picks scheduler defaults by it, e.g. "
            "'A100' cards keep the small ones)."
        ))] = None,
    gpu_free_gib: Annotated[float | None, typer.Option(
        help=(
            "Free memory on the GPU before the server starts, when other processes use it "
            "(nvidia-smi). V1 builds up to 0.9.0 and 0.2.5-0.3.0 count it as the server's own (a smaller KV "
            "cache); 0.9.1+ refuse a budget above the free memory; other V0 builds run out of memory."
        ))] = None,
    gpus_on_node: Annotated[int | None, typer.Option(
        min=1, max=64, help=(
            "GPUs on the node (default: --tensor-parallel-size)."
        ))] = None,
    vllm_version: Annotated[str | None, typer.Option(
        help=(
            "vLLM version the server runs, e.g. 0.6.3 or 0.19 (default: the version the templates "
            "target); picks that release's memory rules."
        ))] = None,
    max_model_len: Annotated[str | None, typer.Option(
        help=(
            "Context length to plan for (default: the model's), or auto: vLLM >= 0.14 fits it to the memory "
            "and the fit-check says to what."
        ))] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        help=(
            "Fraction of GPU memory this server may use (default: that vLLM version's, 0.9 or 0.92)."
        ))] = None,
    dtype: Annotated[str, typer.Option(help="auto, float16, bfloat16 or float32.")] = "auto",
    quantization: Annotated[str | None, typer.Option(help="awq, gptq, fp8, bitsandbytes, ...")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, max=64, help="GPUs one server is split across.")] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(
        min=1, max=64, help=(
            "Pipeline stages (vLLM --pipeline-parallel-size), each on its own GPUs, usually its own node: "
            "the heaviest stage is checked on --tensor-parallel-size GPUs."
        ))] = 1,
    kv_cache_dtype: Annotated[str, typer.Option(help="auto or fp8 (halves KV memory).")] = "auto",
    mamba_ssm_cache_dtype: Annotated[str, typer.Option(
        help=(
            "Mamba hybrids' SSM state: auto (vLLM's default for the version), float16, bfloat16 or float32."
        ))] = "auto",
    rope_scaling: Annotated[str | None, typer.Option(
        help=(
            "vLLM's --rope-scaling JSON, e.g. '{\"rope_type\":\"yarn\",\"factor\":4.0,"
            "\"original_max_position_embeddings\":32768}': stretches the longest max_model_len."
        ))] = None,
    enforce_eager: Annotated[bool, typer.Option(help="No CUDA graphs (saves their memory).")] = False,
    language_model_only: Annotated[bool, typer.Option(
        help="Serve a vision-language model text-only (vLLM >= 0.15 then loads no vision tower).")] = False,
    limit_mm_per_prompt: Annotated[str | None, typer.Option(
        help=(
            "vLLM's --limit-mm-per-prompt JSON: images and every modality named at 0 ('{\"image\": 0}') is "
            "text-only mode; '{\"video\": 0}' leaves videos out of the encoder's profiling pass."
        ))] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        help=(
            "Concurrent sequences vLLM schedules (default: vLLM's)."
        ))] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        help=(
            "Tokens per scheduler step, the profiling batch (default: vLLM's)."
        ))] = None,
    cpu_offload_gb: Annotated[float, typer.Option(
        min=0, help=(
            "vLLM --cpu-offload-gb: GiB of weights per GPU kept in CPU memory (the decoder layers'; embeddings "
            "and lm_head stay on the GPU). In a profile: extra_args."
        ))] = 0.0,
    enable_lora: Annotated[bool, typer.Option(
        help="vLLM --enable-lora: LoRA buffers on every linear layer, allocated with the weights.")] = False,
    max_loras: Annotated[int, typer.Option(
        min=1, max=256, help="vLLM --max-loras: adapters served at once (with --enable-lora).")] = 1,
    max_lora_rank: Annotated[int, typer.Option(
        min=1, max=1024, help="vLLM --max-lora-rank: the largest adapter rank (with --enable-lora).")] = 16,
    env: Annotated[list[str] | None, typer.Option(
        "--env", help=(
            "An environment variable the server runs with, NAME=VALUE (repeatable; a profile's servers have "
            "env:). Read: VLLM_USE_V1=0 (0.8-0.10 run the V0 engine), VLLM_USE_V1=1 (0.7 runs V1), "
            "VLLM_ATTENTION_BACKEND."
        ))] = None,
    kind: Annotated[str, typer.Option(help="generate or embed.")] = "generate",
    online: Annotated[bool, typer.Option(
        help=(
            "Fetch unknown models' config.json and safetensors headers from the hub (cached)."
        ))] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help=(
            "Machine-readable output only (with the resolved inputs)."
        ))] = False,
) -> None:
    r"""Check every GPU's memory plan and vLLM's rules before anything is submitted.

    Exit code: 0 fits, 1 something would fail on the node, 2 the profile itself is invalid.

    Examples:

      biofleet fit-check --profile t4x10

      biofleet fit-check --model Qwen/Qwen2.5-Coder-7B-Instruct --gpu T4 --max-model-len 8192 \
        --gpu-memory-utilization 0.85 --dtype float16 --json

      biofleet fit-check --model meta-llama/Llama-3.1-8B-Instruct --vllm-version 0.10.2 \
        --gpu-visible-gib 23.65 --compute-capability 8.9 --max-model-len 16384
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
        settings = {
            "vllm_version": vllm_version, **_max_model_len(max_model_len),
            "gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype, "quantization": quantization,
            "tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size,
            "kv_cache_dtype": kv_cache_dtype,
            "mamba_ssm_cache_dtype": mamba_ssm_cache_dtype, "rope_scaling": _rope_json(rope_scaling),
            **_mm_modes(language_model_only, limit_mm_per_prompt),
            "enforce_eager": enforce_eager, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens, "gpu_free_gib": gpu_free_gib, "kind": kind,
            "env": _env_pairs(env or []), "cpu_offload_gb": cpu_offload_gb,
            "enable_lora": enable_lora, "max_loras": max_loras, "max_lora_rank": max_lora_rank,
        }
        gpu_args = _GpuArgs(gpu_visible_gib, gpu_memory_gib, compute_capability, gpu_name)
        report = _single(model, gpu, gpu_args, gpus_on_node, settings, online)
        title = f"fit-check {model}"
    else:
        raise ProfileError([ProfileIssue(None, None, "", "give --profile NAME|FILE, or --model M with --gpu G "
                                         "(see biofleet fit-check --help)")])
    if json_out:
        print_json(report.to_json_dict())
    else:
        show_report(report, title)
    raise typer.Exit(EXIT_FITS if report.ok else EXIT_WOULD_FAIL)


ENV_NAME_MAX, ENV_VALUE_MAX = 128, 4096  # --env bounds (the fit-check only reads the few names it knows)


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a malformed one is an error naming it. Names and one-line values
    as a profile's ``env:`` takes them (``profile._ENV_KEY``, ``profile._SHELL_LINE_FORBIDDEN``), bounded in length;
    the profile's refusal of secret-looking names is for what job scripts write, which this does not."""
    from biofleet.errors import ProfileError, ProfileIssue
    from biofleet.profile import _ENV_KEY, _SHELL_LINE_FORBIDDEN

    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or len(name) > ENV_NAME_MAX or not _ENV_KEY.match(name) or len(value) > ENV_VALUE_MAX \
                or any(c in value for c in _SHELL_LINE_FORBIDDEN):
            raise ProfileError([ProfileIssue(None, None, "--env", f"{pair[:80]!r} is not NAME=VALUE (a variable "
                                             "name of letters, digits and _, a one-line value)")])
        out[name] = value
    return out


class _GpuArgs(NamedTuple):
    visible_gib: float | None
    memory_gib: float | None
    compute_capability: str | None
    name: str | None


def _gpu_of(gpu: str | None, a: _GpuArgs) -> GpuSpec:
    """The GPU the options describe: a catalogue card (its visible memory overridable), or a custom one."""
    from biofleet.catalog.gpus import custom_gpu, get_gpu
    from biofleet.errors import ProfileError, ProfileIssue

    if gpu:
        g = get_gpu(gpu)
        update: dict[str, object] = {}
        if a.visible_gib:
            update.update(visible_gib=a.visible_gib, note=f"{g.name}: {a.visible_gib} GiB visible as given")
        if a.compute_capability:
            update["compute_capability"] = a.compute_capability
        return g.model_validate({**g.model_dump(), **update}) if update else g
    if (a.visible_gib or a.memory_gib) and a.compute_capability:
        return custom_gpu(a.memory_gib, a.compute_capability, name=a.name or "custom", visible_gib=a.visible_gib)
    raise ProfileError([ProfileIssue(None, None, "--gpu", "give --gpu NAME, or --gpu-visible-gib X (or "
                                     "--gpu-memory-gib X) with --compute-capability M.N")])


def _max_model_len(text: str | None) -> dict[str, Any]:
    """``--max-model-len`` as vLLM takes it: a positive number, or ``auto`` (``-1``)."""
    from biofleet.catalog.vllm_rules import MAX_TOKENS

    value = (text or "").strip().lower()
    if not value:
        return {"max_model_len": None}
    if value in ("auto", "-1"):
        return {"max_model_len": None, "max_model_len_auto": True}
    if value.isdigit() and 0 < int(value) <= MAX_TOKENS:
        return {"max_model_len": int(value)}
    raise typer.BadParameter(f"{text!r} is not a positive number of tokens or auto", param_hint="--max-model-len")


def _mm_modes(flag: bool, limits: str | None) -> dict[str, bool]:
    """``language_model_only`` and ``video_off`` from --language-model-only and --limit-mm-per-prompt."""
    from biofleet.errors import ProfileError, ProfileIssue
    from biofleet.fitcheck import _json_object, language_model_only_override, video_off_override

    if limits is not None and _json_object(limits) is None:
        raise ProfileError([ProfileIssue(None, None, "--limit-mm-per-prompt",
                                         f"not a JSON object of at most 4 KiB: {limits[:80]!r} "
                                         "(write it as vLLM takes it, e.g. '{\"image\": 0, \"video\": 0}')")])
    args = (["--language-model-only"] if flag else []) + (["--limit-mm-per-prompt", limits] if limits else [])
    # the readers of a profile's extra_args
    return {"language_model_only": language_model_only_override(args), "video_off": video_off_override(args)}


def _rope_json(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    from biofleet.errors import ProfileError, ProfileIssue
    from biofleet.fitcheck import rope_override

    data = rope_override(["--rope-scaling", text])  # the one reader, as for a profile's extra_args
    if data is None:
        example = '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}'
        raise ProfileError([ProfileIssue(None, None, "--rope-scaling",
                                         f"not a JSON object of at most 4 KiB: {text[:80]!r} "
                                         f"(write it as vLLM takes it, e.g. '{example}')")])
    return data


def _single(model: str, gpu: str | None, gpu_args: _GpuArgs, gpus_on_node: int | None, settings: dict[str, Any],
            online: bool) -> FitReport:
    from pydantic import ValidationError

    from biofleet.catalog.gpus import UnknownGpuError
    from biofleet.catalog.models import UnknownModelError, get_model
    from biofleet.errors import ProfileError, ProfileIssue
    from biofleet.fitcheck import Finding, ServerInput, check_server_on_gpu

    try:
        g = _gpu_of(gpu, gpu_args)
    except ValidationError as exc:  # a size past any GPU's, inf, NaN, a bad compute capability
        raise _option_errors(exc, {"visible_gib": "--gpu-visible-gib", "memory_gib": "--gpu-memory-gib"}) from None
    except (UnknownGpuError, ValueError) as exc:  # unknown card, custom GPU without memory, bad compute capability
        raise ProfileError([ProfileIssue(None, None, "--gpu", str(exc.args[0] if exc.args else exc))]) from None
    try:
        spec = get_model(model, allow_network=online)
    except (UnknownModelError, ValueError) as exc:  # not in the catalogue, or a config.json it cannot read
        raise ProfileError([ProfileIssue(None, None, "--model", str(exc.args[0] if exc.args else exc))]) from None
    try:
        settings = {k: v for k, v in settings.items() if v is not None}
        server = ServerInput(name=model.rstrip("/").split("/")[-1], model=spec, **settings)
    except ValidationError as exc:
        raise _option_errors(exc) from None
    report = check_server_on_gpu(server, g, gpus_on_node=gpus_on_node)
    if not gpu and not gpu_args.name and g.visible_gib >= 70:
        note = Finding(severity="info", code="scheduler-defaults-assumed",
                       message="vLLM picks its batch defaults by device name: an unnamed card with >= 70 GiB is "
                               "treated like an H100 (8192 tokens, 1024 sequences); A100s keep 2048 / 256",
                       fix="give --gpu-name, or --max-num-batched-tokens and --max-num-seqs")
        report = report.model_copy(update={"findings": (*report.findings, note)})
    return report


def _option_errors(exc: ValidationError, names: Mapping[str, str] | None = None) -> ProfileError:
    """A model's validation errors as the options the user typed: ``--max-num-seqs: Input should be ...``."""
    from biofleet.errors import ProfileError, ProfileIssue

    def option(loc: tuple[int | str, ...]) -> str:
        field = str(loc[0]) if loc else ""
        return (names or {}).get(field) or "--" + "-".join(map(str, loc)).replace("_", "-")

    return ProfileError([ProfileIssue(None, None, option(e["loc"]), e["msg"]) for e in exc.errors()])


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


def show_report(report: FitReport, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    verdict = "[bold green]fits[/bold green]" if report.ok else "[bold red]would fail[/bold red]"
    out.print(f"[bold]{title}[/bold]: {verdict}")
    by_name = {s.name: s for s in report.servers}
    for g in report.gpus:
        out.print()
        head = (f"[bold]{escape(g.node)}[/bold] GPU {g.index} ({g.gpu}, {g.visible_gib:.1f} GiB visible), "
                f"util sum {g.util_sum:.2f}")
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
    out.print("[dim]GiB as CUDA reports them. budget = util x visible; other = activations + non-torch memory + "
              "CUDA graphs when they count in the budget;\n"
              "seqs = full-length sequences the KV cache holds. memory: [blue]█[/blue] weights "
              "[magenta]█[/magenta] other [green]█[/green] KV · free[/dim]")


def _finding(out: Console, f: Finding, prefix: str = "") -> None:
    from rich.markup import escape

    style = _SEV_STYLE.get(f.severity, "")
    out.print(f"  [{style}]{f.severity}[/{style}] {escape(prefix + f.message)} [dim]({f.code})[/dim]")
    if f.fix:
        out.print(f"    fix: {escape(f.fix)}")
