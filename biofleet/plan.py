"""Profile -> fit-check inputs, and the fleet summary views (GPUs, cost)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from biofleet.errors import ProfileError, ProfileIssue
from biofleet.profile import Instance, JobSpec, Profile

if TYPE_CHECKING:
    from biofleet.catalog.gpus import GpuSpec
    from biofleet.catalog.models import ModelSpec
    from biofleet.fitcheck import NodeInput, ServerInput

HOURS_PER_MONTH = 730


def node_label(job: JobSpec, task: int) -> str:
    return f"{job.name}[{task}]" if job.is_array else job.name


def gpu_of(job: JobSpec) -> GpuSpec | None:
    """The job's GPU from the catalogue (or its custom card), or None for a CPU-only job."""
    from biofleet.catalog.gpus import custom_gpu, get_gpu

    if job.gpu is None:
        return None
    if isinstance(job.gpu, str):
        return get_gpu(job.gpu)
    return custom_gpu(job.gpu.memory_gib, job.gpu.compute_capability, name=job.gpu.name)


def fit_inputs(profile: Profile, *, allow_network: bool = False) -> list[NodeInput]:
    """One ``NodeInput`` per node of every job, models resolved through the catalogue."""
    from biofleet.catalog.models import UnknownModelError, get_model
    from biofleet.fitcheck import NodeInput

    insts = profile.instances()
    gpu_jobs = {job.name for job in profile.jobs if job.gpu is not None}
    models: dict[str, ModelSpec] = {}
    issues: list[ProfileIssue] = []
    for inst in insts:
        ref = inst.spec.model
        if inst.job not in gpu_jobs or ref in models:
            continue
        try:
            models[ref] = get_model(ref, extra=profile.models, allow_network=allow_network)
        except UnknownModelError as exc:
            message = str(exc.args[0] if exc.args else exc)
            issues.append(ProfileIssue(None, None, f"servers.{inst.server}.model", message))
    if issues:
        raise ProfileError(issues)
    nodes: list[NodeInput] = []
    most = elastic_max(profile)
    for job in profile.jobs:
        gpu = gpu_of(job)
        if gpu is None:  # CPU-only job: nothing to fit into GPU memory
            continue
        for t in range(len(job.nodes)):
            servers: list[tuple[ServerInput, tuple[int, ...]]] = []
            for inst in (i for i in insts if i.job == job.name and i.task == t):
                servers.append((server_input(inst, models[inst.spec.model], profile.vllm_version), inst.gpus))
            # An elastic job runs up to max copies, each on a node of its own with this same plan:
            # checking one node checks every replica at max.
            label = node_label(job, t) + (f" (each of up to {most[job.name]} elastic replicas)"
                                          if job.name in most else "")
            nodes.append(NodeInput(label=label, gpu=gpu, gpu_count=job.gpus_per_node, servers=tuple(servers)))
    return nodes


def elastic_max(profile: Profile) -> dict[str, int]:
    """Job name -> the most replicas its elastic server may run (one submission of the job each)."""
    out = {}
    for key, job in profile.elastic_servers().items():
        rng = profile.servers[key].elastic
        assert rng is not None
        out[job.name] = rng.max
    return out


def server_input(inst: Instance, model: ModelSpec, vllm_version: str | None = None) -> ServerInput:
    from biofleet.catalog.vllm_rules import DEFAULT_VLLM_VERSION
    from biofleet.fitcheck import (
        ServerInput,
        cpu_offload_override,
        language_model_only_override,
        lora_override,
        rope_override,
        video_off_override,
    )

    s = inst.spec
    args = [str(a) for a in s.extra_args]
    return ServerInput(
        name=inst.name, model=model, kind=s.kind, engine=s.engine, vllm_version=vllm_version or DEFAULT_VLLM_VERSION,
        dtype=s.dtype,
        quantization=s.quantization, max_model_len=None if s.max_model_len == "auto" else s.max_model_len,
        max_model_len_auto=s.max_model_len == "auto",
        gpu_memory_utilization=s.gpu_memory_utilization, tensor_parallel_size=s.tensor_parallel_size,
        kv_cache_dtype=s.kv_cache_dtype, mamba_ssm_cache_dtype=s.mamba_ssm_cache_dtype,
        enforce_eager=s.enforce_eager, max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens, env={**s.env},
        rope_scaling=rope_override(args),
        cpu_offload_gb=cpu_offload_override(args),
        language_model_only=language_model_only_override(args),
        video_off=video_off_override(args),
        **lora_override(args),
    )


@dataclass(frozen=True)
class FleetSummary:
    name: str
    path: str
    gpus: dict[str, int]  # GPU name -> count
    servers: int  # placed instances
    usd_per_month: float


def summarize(profile: Profile, path: str = "") -> FleetSummary:
    """GPUs, servers and cost of the fleet; an elastic server counts at its max replicas (the most
    it can hold: it costs less, by how long its load keeps replicas up)."""
    gpus: dict[str, int] = {}
    cost = 0.0
    most = elastic_max(profile)
    for job in profile.jobs:
        spec = gpu_of(job)
        if spec is None:
            continue
        n = len(job.nodes) * job.gpus_per_node * most.get(job.name, 1)
        gpus[spec.name] = gpus.get(spec.name, 0) + n
        cost += n * spec.price_per_hour * HOURS_PER_MONTH
    servers = sum(most.get(i.job, 1) for i in profile.instances())
    return FleetSummary(profile.name, path, gpus, servers, round(cost, 2))
