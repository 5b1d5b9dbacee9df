"""Fleet profiles: YAML in, a frozen, validated :class:`Profile` out.

A profile says *where* (cluster settings), *what* (servers), *which server runs
on which node/GPU* (jobs) and *how requests find them* (routing, proxy).
``extends:`` names a base profile and ``include:`` lists shared files (a group's
cluster settings); mappings merge key by key, lists are replaced, the profile
itself wins.

Every string that reaches a shell script is either validated here against a
strict pattern or quoted by the renderer; values that cannot be made safe are
rejected with the field and a fix.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from biofleet.catalog.gpus import MAX_GPU_GIB
from biofleet.catalog.models import ModelSpec
from biofleet.catalog.vllm_rules import DEFAULT_VLLM_VERSION, MAX_TOKENS, check_vllm_version
from biofleet.elastic.policy import ReplicaRange, ScalingPolicy
from biofleet.errors import ProfileError, ProfileIssue, validation_message
from biofleet.names import NAME, SERVED_NAME, shown
from biofleet.proxy.config import RoutingConfig
from biofleet.resources import profiles_dir
from biofleet.yamlpos import Located, YamlSyntaxError, load_located

# ---------------------------------------------------------------------------
# String shapes. Each rejects shell metacharacters outright, so even a value
# that escaped quoting could not run anything.

_MODEL_REF = re.compile(r"^[A-Za-z0-9_.~/][A-Za-z0-9_.~/+-]{0,255}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:|&!*\[\]-]{1,128}$")  # constraint syntax uses &|!*[]
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.,-]{1,128}$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Paths may use ~, $HOME and $USER (expanded on the cluster side) and nothing else.
# A bare $HOME/$USER must not run on into a name ("$USERX" is another, usually unset, variable).
SHELL_PATH = re.compile(
    r"^(~|\$HOME(?![A-Za-z0-9_])|\$\{HOME\}|\$USER(?![A-Za-z0-9_])|\$\{USER\}|[A-Za-z0-9_.@+/=-])+$"
)
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_ENGINE_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*(=[A-Za-z0-9_.,:/@+={}\[\]\"' -]*)?$|^[A-Za-z0-9_.,:/@+={}\[\]\"-]+$")
_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY)", re.I)
_SHELL_LINE_FORBIDDEN = ("\n", "\r", "\x00")


def _matcher(rx: re.Pattern[str], what: str, example: str) -> AfterValidator:
    def check(v: str) -> str:
        if not rx.match(v):
            # a character is allowed if it fits the pattern somewhere: '-' or '.' may not start a name, but may follow
            bad = sorted({c for c in v if not c.isalnum() and not any(rx.match(t) for t in (c, f"a{c}", f"a{c}a"))})
            why = f"characters {''.join(bad)!r} are not allowed" if bad else "not of that form"
            raise ValueError(f"{shown(v)} is not a valid {what} ({why}); e.g. {example}")
        return v

    return AfterValidator(check)


Name = Annotated[str, _matcher(NAME, "name (letters, digits, '.', '_', '-')", "coder")]
ServedName = Annotated[str, _matcher(SERVED_NAME, "served model name", "coder or org/model-name")]
ModelRef = Annotated[str, _matcher(_MODEL_REF, "model id or path", "Qwen/Qwen2.5-7B-Instruct or /models/my-model")]
SlurmWord = Annotated[str, _matcher(_SLURM_WORD, "SLURM value", "t4flex")]
PlainWord = Annotated[str, _matcher(_PLAIN_WORD, "SLURM value", "t4flex")]
TimeLimit = Annotated[str, _matcher(_TIME, "time limit", "24:00:00 or 1-00:00:00")]
Memory = Annotated[str, _matcher(_MEM, "memory size", "50G")]
def _shell_path(v: str) -> str:
    """Name a variable the job script would expand to something else (or nothing) before the
    pattern check does: ``$USERX`` is not ``$USER`` followed by X."""
    for m in _VARIABLE.finditer(v):
        name = m.group(1)
        if name in ("HOME", "USER"):
            continue
        hint = ""
        for known in ("HOME", "USER"):
            if name.startswith(known):
                hint = f"; write ${{{known}}}{name[len(known):]} for ${known} followed by {name[len(known):]!r}"
        raise ValueError(f"{v!r} uses ${name}, which job scripts do not expand: a path may use only ~, $HOME "
                         f"and $USER (write other values out in the profile){hint}")
    return v


ShPath = Annotated[str, AfterValidator(_shell_path),
                   _matcher(SHELL_PATH, "path (only ~, $HOME and $USER may be expanded)", "/scratch/$USER/hf_cache")]
Hostname = Annotated[str, _matcher(_HOSTNAME, "host name", "login.cluster.example.org")]
EngineArg = Annotated[str, _matcher(_ENGINE_FLAG, "engine argument", "--enable-prefix-caching or --swap-space=4")]


def _env_map(v: dict[str, str]) -> dict[str, str]:
    for k, val in v.items():
        if not _ENV_KEY.match(k):
            raise ValueError(f"{k!r} is not a valid environment variable name")
        if _SECRETISH.search(k):
            raise ValueError(
                f"{k} looks like a secret; secrets must not be written into job scripts. "
                f"Put it in a file readable only by you and use secret_files: {{{k}: /path/to/file}}"
            )
        if any(c in str(val) for c in _SHELL_LINE_FORBIDDEN):
            raise ValueError(f"the value of {k} must be a single line")
    return v


EnvMap = Annotated[dict[str, str], AfterValidator(_env_map)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# ---------------------------------------------------------------------------
# Cluster side


class SSHSettings(_Frozen):
    host: Hostname
    user: Name | None = None
    port: int = Field(22, ge=1, le=65535)
    key_file: ShPath | None = None
    known_hosts: ShPath | None = None
    trust_new_host: bool = False


class ClusterSettings(_Frozen):
    partition: PlainWord | None = None
    account: PlainWord | None = None
    qos: PlainWord | None = None
    constraint: SlurmWord | None = None
    reservation: PlainWord | None = None
    time: TimeLimit = "24:00:00"
    cpus_per_task: int = Field(8, gt=0, le=1024)
    mem: Memory = "32G"
    # Shell lines run before the servers start (module load, conda activate).
    # They are the user's own shell code and are written as given, one per line.
    setup: tuple[str, ...] = ()
    container: ShPath | None = None  # Apptainer image (.sif); servers run inside it
    container_binds: tuple[ShPath, ...] = ()
    hf_home: ShPath | None = None
    workdir: ShPath = "~/biofleet"  # fleets live in <workdir>/<fleet name>/ on the cluster side
    python: ShPath = "python3"  # interpreter on the compute nodes that has vLLM
    bind_host: Literal["0.0.0.0", "127.0.0.1", "::"] = "0.0.0.0"
    advertise: Literal["ip", "hostname", "loopback"] = "ip"
    env: EnvMap = Field(default_factory=dict)
    secret_files: dict[str, ShPath] = Field(default_factory=dict)  # ENV_NAME -> file read at job start
    sbatch_extra: tuple[EngineArg, ...] = ()
    ssh: SSHSettings | None = None
    slurm_conf: ShPath | None = None  # a non-default slurm.conf (SLURM_CONF) for every SLURM command

    @field_validator("setup")
    @classmethod
    def _setup_lines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for line in v:
            if any(c in line for c in _SHELL_LINE_FORBIDDEN):
                raise ValueError("each setup entry must be a single line; write one list item per line")
        return v

    @field_validator("secret_files")
    @classmethod
    def _secret_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not _ENV_KEY.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v


# ---------------------------------------------------------------------------
# Servers

QUANT_METHODS = (
    "awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "fp8", "bitsandbytes",
    "gguf", "compressed-tensors", "experts_int8", "fbgemm_fp8", "modelopt", "mxfp4",
)
QuantMethod = Literal[
    "awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "fp8", "bitsandbytes",
    "gguf", "compressed-tensors", "experts_int8", "fbgemm_fp8", "modelopt", "mxfp4",
]


class ServerSpec(_Frozen):
    model: ModelRef
    served_name: ServedName | None = None  # defaults to the server's key
    aliases: tuple[ServedName, ...] = ()
    kind: Literal["generate", "embed"] = "generate"
    engine: Literal["vllm", "mock"] = "vllm"
    dtype: Literal["auto", "float16", "half", "bfloat16", "float32"] = "auto"
    quantization: QuantMethod | None = None
    # a number, or "auto": vLLM >= 0.14 fits the context to the memory (--max-model-len auto)
    max_model_len: int | Literal["auto"] | None = None
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    # Mamba hybrids' SSM state (vLLM --mamba-ssm-cache-dtype); auto: vLLM's default for the version
    mamba_ssm_cache_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(None, gt=0, le=MAX_TOKENS)
    max_num_batched_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    trust_remote_code: bool = False
    port: int | None = Field(None, ge=1024, le=65535)  # default: a free port picked at job start
    extra_args: tuple[EngineArg, ...] = ()
    env: EnvMap = Field(default_factory=dict)
    roles: tuple[Name, ...] = ()  # task types this server answers (merged into routing.tasks)
    # A number: the placements the jobs make (checked against them). {min, max}: an elastic server,
    # placed once (a single-node job of its own), whose copies the proxy's controller submits and
    # cancels with the load, between min and max, following `scaling`.
    replicas: Annotated[
        Annotated[int, Field(ge=1), Tag("count")] | Annotated[ReplicaRange, Tag("range")],
        Discriminator(lambda v: "range" if isinstance(v, (dict, ReplicaRange)) else "count"),
    ] | None = None
    scaling: ScalingPolicy | None = None
    # A server that exits is restarted in place by its job (back-off 1, 2, 4 ... 60 s) this many
    # times before it is marked FAILED; its co-located neighbours keep serving meanwhile.
    max_restarts: int = Field(3, ge=0, le=100)

    @field_validator("max_model_len", mode="before")
    @classmethod
    def _max_model_len(cls, v: Any) -> Any:
        if v is None or v == "auto":
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            if v <= 0:
                raise ValueError("Input should be greater than 0 (or auto)")
            if v > MAX_TOKENS:
                raise ValueError(f"Input should be at most {MAX_TOKENS:,} tokens (or auto)")
            return v
        raise ValueError(f"Input should be a positive number of tokens or auto (got {str(v)[:40]!r})")

    @property
    def elastic(self) -> ReplicaRange | None:
        """The replica range of an elastic server (None: a fixed one)."""
        return self.replicas if isinstance(self.replicas, ReplicaRange) else None

    @property
    def policy(self) -> ScalingPolicy:
        return self.scaling or ScalingPolicy()

    @model_validator(mode="after")
    def _scaling_needs_range(self) -> ServerSpec:
        if self.scaling is not None and self.elastic is None:
            raise ValueError("scaling applies to elastic servers only; give replicas: {min: 0, max: N} "
                             "(a plain number keeps a fixed count) or remove scaling")
        return self


# ---------------------------------------------------------------------------
# Placement


class CustomGpu(_Frozen):
    name: Name = "custom"
    memory_gib: float = Field(gt=0, le=MAX_GPU_GIB)
    compute_capability: Annotated[str, _matcher(re.compile(r"^\d+\.\d$"), "compute capability", "7.5")]

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _cc_number(cls, v: Any) -> Any:
        return f"{v:.1f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    price_per_hour: float = Field(0.0, ge=0)


class NodeSpec(_Frozen):
    """One node of a job: ``gpus[i]`` lists the servers on GPU i.

    A tensor-parallel server is written in the slot of its first GPU and uses
    the next ``tensor_parallel_size - 1`` GPUs too.
    """

    gpus: tuple[tuple[Name, ...], ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # "coder" -> one GPU with coder; [backup, embeddings] -> both on GPU 0.
        if isinstance(v, str):
            return {"gpus": [[v]]}
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return {"gpus": [v]}
        return v


class JobSpec(_Frozen):
    name: Name
    # A catalogue name, a custom card {memory_gib, compute_capability}, or None for a CPU-only job.
    gpu: Annotated[
        Annotated[Name, Tag("gpu-name")] | Annotated[CustomGpu, Tag("gpu-custom")],
        Discriminator(lambda v: "gpu-custom" if isinstance(v, (dict, CustomGpu)) else "gpu-name"),
    ] | None = None
    gpus_per_node: int = Field(1, ge=1, le=16)
    gres_type: PlainWord | None = None  # default: the GPU catalogue's type (t4, h100, ...)
    partition: PlainWord | None = None
    account: PlainWord | None = None
    qos: PlainWord | None = None
    constraint: SlurmWord | None = None
    time: TimeLimit | None = None
    cpus_per_task: int | None = Field(None, gt=0, le=1024)
    mem: Memory | None = None
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: Any) -> Any:
        # A card name is looked up now, so that an unknown one is a profile error at its line (exit 2), not a
        # failure of whichever command first plans the job.
        if isinstance(v, str):
            from biofleet.catalog.gpus import UnknownGpuError, get_gpu

            try:
                get_gpu(v)
            except UnknownGpuError as exc:
                raise ValueError(str(exc)) from None
        return v

    @property
    def is_array(self) -> bool:
        """More than one node: one array task per node, each on its own node."""
        return len(self.nodes) > 1


class ProxySettings(_Frozen):
    run: Literal["slurm", "local"] = "slurm"
    partition: PlainWord | None = None  # default: cluster.partition
    host: Literal["0.0.0.0", "127.0.0.1", "::"] = "0.0.0.0"
    port: int | None = Field(8080, ge=1024, le=65535)  # None: pick a free one
    cpus_per_task: int = Field(2, gt=0)
    mem: Memory = "4G"
    time: TimeLimit | None = None
    # How long the proxy waits for a backend, and how many clients it holds; unset: the proxy's
    # defaults (biofleet.proxy.config.ProxyConfig says why each is what it is).
    connect_timeout_s: float | None = Field(None, gt=0, le=600)
    first_byte_timeout_s: float | None = Field(None, gt=0, le=86400)  # not streaming: the whole generation
    stream_first_byte_timeout_s: float | None = Field(None, gt=0, le=86400)  # streaming: the first event
    idle_timeout_s: float | None = Field(None, gt=0, le=86400)  # a gap between chunks of an answer
    deep_probe: bool | None = None  # a one-token completion now and then catches a hung engine
    max_client_connections: int | None = Field(None, ge=1, le=1_000_000)

    def proxy_flags(self) -> list[str]:
        """The ``biofleet proxy`` options for the fields set here (none for those left unset)."""
        out: list[str] = []
        for name in ("connect_timeout_s", "first_byte_timeout_s", "stream_first_byte_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if value is not None:
                out += ["--" + name[: -len("_s")].replace("_", "-"), f"{value:g}"]
        if self.deep_probe is not None:
            out.append("--deep-probe" if self.deep_probe else "--no-deep-probe")
        if self.max_client_connections is not None:
            out += ["--max-connections", str(self.max_client_connections)]
        return out


# ---------------------------------------------------------------------------
# The profile


@dataclass(frozen=True)
class Instance:
    """One placed copy of a server: what a job task actually starts."""

    name: str  # unique in the fleet: the server key, or key-N for replicas
    server: str
    spec: ServerSpec
    job: str
    task: int  # array task index (0 for single-node jobs)
    gpus: tuple[int, ...]  # GPU indices on the node

    @property
    def served_name(self) -> str:
        return self.spec.served_name or self.server


class Profile(_Frozen):
    name: Name
    description: str = ""
    extends: str | None = None
    include: tuple[str, ...] = ()
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    servers: dict[Name, ServerSpec] = Field(min_length=1)
    jobs: tuple[JobSpec, ...] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    # The vLLM release the jobs run; the fit-check applies that release's memory rules.
    vllm_version: Annotated[str, AfterValidator(check_vllm_version)] = DEFAULT_VLLM_VERSION
    # Walltime: status announces servers whose job ends within renew_margin; with renew: true,
    # `up --renew` starts a replacement task first and cancels the old one once it is READY.
    renew: bool = False
    renew_margin: TimeLimit = "00:30:00"

    @field_validator("models", mode="before")
    @classmethod
    def _model_ids(cls, v: Any) -> Any:
        # The key is the model id; users need not repeat it inside.
        if isinstance(v, Mapping):
            return {k: ({"id": k, **m} if isinstance(m, Mapping) else m) for k, m in v.items()}
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Profile:
        errors: list[tuple[tuple[Any, ...], str]] = []
        placed: Counter[str] = Counter()
        job_names: set[str] = set()
        for j, job in enumerate(self.jobs):
            if job.name == "proxy":
                errors.append((("jobs", j, "name"),
                               "'proxy' is reserved for the fleet's proxy job; choose another name"))
            if job.name in job_names:
                errors.append((("jobs", j, "name"), f"job name {job.name!r} is used twice; job names must be unique"))
            job_names.add(job.name)
            for n, node in enumerate(job.nodes):
                if len(node.gpus) > job.gpus_per_node:
                    errors.append((
                        ("jobs", j, "nodes", n),
                        f"lists {len(node.gpus)} GPUs but the job has gpus_per_node: {job.gpus_per_node}; "
                        f"raise gpus_per_node or move servers to another node",
                    ))
                for g, slot in enumerate(node.gpus):
                    for s, server in enumerate(slot):
                        if server not in self.servers:
                            errors.append((
                                ("jobs", j, "nodes", n, "gpus", g, s),
                                f"unknown server {server!r}{_suggest(server, self.servers)}; "
                                f"defined servers: {', '.join(sorted(self.servers))}",
                            ))
                        else:
                            placed[server] += 1
        for key, spec in self.servers.items():
            if placed[key] == 0:
                errors.append((("servers", key),
                               "is not placed on any node; add it to a jobs[].nodes entry or remove it"))
            elif spec.elastic is not None:
                errors.extend(_elastic_placement(self, key, placed[key]))
            elif isinstance(spec.replicas, int) and spec.replicas != placed[key]:
                errors.append((
                    ("servers", key, "replicas"),
                    f"is {spec.replicas} but the jobs place {key!r} {placed[key]} time(s); "
                    f"place it {spec.replicas} times or change replicas",
                ))
        # A served name may be shared only by servers of the same model: they are replicas
        # (e.g. one on an L4 and one on a T4, with different settings). Anything else is ambiguous.
        owner: dict[str, str] = {}
        for key, spec in self.servers.items():
            for nm in (spec.served_name or key, *spec.aliases):
                other = owner.get(nm)
                if other is not None and other != key and self.servers[other].model != spec.model:
                    errors.append((
                        ("servers", key),
                        f"served name/alias {nm!r} is also used by server {other!r} with another model; "
                        f"servers may share a served name only as replicas of the same model",
                    ))
                owner.setdefault(nm, key)
        for key, spec in self.servers.items():
            own = {spec.served_name or key, *spec.aliases}
            for role in spec.roles:
                target = self.routing.tasks.get(role)
                if target is not None and target not in own:
                    errors.append((
                        ("servers", key, "roles"),
                        f"role {role!r} is routed to {target!r} in routing.tasks; remove one of the two",
                    ))
        names = set(owner)
        for path, ref in _routing_refs(self.routing):
            if ref not in names:
                errors.append((("routing", *path), f"names {ref!r}, which no server serves{_suggest(ref, names)}"))
        if errors:
            raise _CrossCheckError(errors)
        return self

    # -- derived views -------------------------------------------------------

    def served_names(self) -> dict[str, str]:
        """served name or alias -> server key"""
        out: dict[str, str] = {}
        for key, spec in self.servers.items():
            for nm in (spec.served_name or key, *spec.aliases):
                out[nm] = key
        return out

    def task_table(self) -> dict[str, str]:
        """routing.tasks plus each server's roles: task type -> served name."""
        table = dict(self.routing.tasks)
        for key, spec in self.servers.items():
            for role in spec.roles:
                table.setdefault(role, spec.served_name or key)
        return table

    def instances(self) -> list[Instance]:
        counts: Counter[str] = Counter()
        for job in self.jobs:
            for node in job.nodes:
                for slot in node.gpus:
                    counts.update(slot)
        seen: Counter[str] = Counter()
        out: list[Instance] = []
        for job in self.jobs:
            for t, node in enumerate(job.nodes):
                for g, slot in enumerate(node.gpus):
                    for server in slot:
                        spec = self.servers[server]
                        name = server if counts[server] == 1 else f"{server}-{seen[server]}"
                        seen[server] += 1
                        tp = spec.tensor_parallel_size
                        out.append(Instance(name, server, spec, job.name, t, tuple(range(g, g + tp))))
        return out

    def job(self, name: str) -> JobSpec:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def elastic_servers(self) -> dict[str, JobSpec]:
        """Elastic server key -> the single-node job whose script is what one replica runs."""
        out: dict[str, JobSpec] = {}
        for key, spec in self.servers.items():
            if spec.elastic is not None:
                out[key] = next(j for j in self.jobs if any(key in slot for n in j.nodes for slot in n.gpus))
        return out

    def elastic_jobs(self) -> set[str]:
        return {job.name for job in self.elastic_servers().values()}


def _elastic_placement(profile: Profile, key: str, placed: int) -> list[tuple[tuple[Any, ...], str]]:
    """An elastic server's job is what one replica runs: one node, this server alone, placed once;
    and its names are its own (the controller holds and counts requests per name)."""
    errors: list[tuple[tuple[Any, ...], str]] = []
    where = ("servers", key, "replicas")
    if placed != 1:
        errors.append((where, f"is elastic ({{min, max}}) but the jobs place {key!r} {placed} times; place it "
                              f"once, in a single-node job of its own: each replica is one submission of that job"))
        return errors
    for j, job in enumerate(profile.jobs):
        names = {s for n in job.nodes for slot in n.gpus for s in slot}
        if key not in names:
            continue
        if job.is_array:
            errors.append((("jobs", j, "nodes"), f"places elastic server {key!r} in a job of {len(job.nodes)} "
                                                 f"nodes; give it a single-node job (nodes: [{key}]): the "
                                                 f"controller submits that job once per replica"))
        others = sorted(names - {key})
        if others:
            errors.append((("jobs", j, "nodes"), f"places {', '.join(others)} beside elastic server {key!r}; "
                                                 f"an elastic server needs a job of its own (each replica is "
                                                 f"one submission of it), so move the others to another job"))
    spec = profile.servers[key]
    mine = {spec.served_name or key, *spec.aliases}
    for other, ospec in profile.servers.items():
        if other != key and mine & {ospec.served_name or other, *ospec.aliases}:
            shared = ", ".join(sorted(mine & {ospec.served_name or other, *ospec.aliases}))
            errors.append((("servers", key), f"is elastic and shares the name {shared} with server {other!r}; an "
                                             f"elastic server's names must be its own (requests for them are "
                                             f"held and counted per server)"))
    return errors


class _CrossCheckError(ValueError):
    def __init__(self, errors: list[tuple[tuple[Any, ...], str]]):
        self.errors = errors
        super().__init__("; ".join(m for _, m in errors))


def _routing_refs(r: RoutingConfig) -> list[tuple[tuple[Any, ...], str]]:
    refs: list[tuple[tuple[Any, ...], str]] = []
    if r.default:
        refs.append((("default",), r.default))
    if r.intent_model:
        refs.append((("intent_model",), r.intent_model))
    if r.safety is not None:
        refs.append((("safety", "model"), r.safety.model))
    for task, target in r.tasks.items():
        refs.append((("tasks", task), target))
    for alias, target in r.aliases.items():
        refs.append((("aliases", alias), target))
    for src, chain in r.fallbacks.items():
        refs.append((("fallbacks", src), src))
        for i, target in enumerate(chain):
            refs.append((("fallbacks", src, i), target))
    for i, cloud in enumerate(r.cloud_fallbacks):
        for local in cloud.models:
            refs.append((("cloud_fallbacks", i, "models", local), local))
    return refs


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------
# Loading


def shipped_profiles() -> list[Path]:
    return sorted(p for p in profiles_dir().glob("*.yaml") if not p.name.startswith("_"))


def resolve_profile_path(ref: str, *, relative_to: Path | None = None) -> Path:
    """A path to a YAML file, or the name of a shipped profile."""
    candidates = []
    p = Path(ref).expanduser()
    if relative_to is not None and not p.is_absolute():
        candidates.append(relative_to / p)
    candidates.append(p)
    if not ref.endswith((".yaml", ".yml")) and "/" not in ref:
        candidates.append(profiles_dir() / f"{ref}.yaml")
    for c in candidates:
        try:
            if c.is_file():
                return c
        except OSError:  # a name too long for the file system, a directory we may not search: not this one
            continue
    names = [x.stem for x in shipped_profiles()]
    raise ProfileError([
        ProfileIssue(None, None, "", f"profile {shown(ref)} not found: not a file, nor a shipped profile"
                     f"{_suggest(ref, names)}; shipped: {', '.join(names)}")
    ])


def load_profile(ref: str | Path) -> Profile:
    path = resolve_profile_path(str(ref))
    located = _load_merged(path, stack=())
    return _validate(located, path)


def _load_merged(path: Path, stack: tuple[Path, ...]) -> Located:
    real = path.resolve()
    if real in stack:
        chain = " -> ".join(str(p) for p in (*stack, real))
        raise ProfileError([ProfileIssue(str(path), None, "extends", f"circular extends/include: {chain}")])
    try:
        doc = load_located(path)
    except YamlSyntaxError as exc:
        raise ProfileError([ProfileIssue(exc.file, exc.line, "", exc.message)]) from None
    except OSError as exc:
        raise ProfileError([ProfileIssue(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    if not isinstance(doc.data, dict):
        raise ProfileError([ProfileIssue(str(path), 1, "", "a profile must be a YAML mapping (key: value)")])
    layers: list[Located] = []
    base = doc.data.get("extends")
    includes = doc.data.get("include", [])
    if base is not None:
        if not isinstance(base, str):
            f, ln = doc.locate(("extends",))
            raise ProfileError([ProfileIssue(f, ln, "extends", "must be a profile name or a path")])
        layers.append(_load_part(base, path, doc, ("extends",), (*stack, real)))
    if not isinstance(includes, list):
        f, ln = doc.locate(("include",))
        raise ProfileError([ProfileIssue(f, ln, "include", "must be a list of file paths")])
    for i, inc in enumerate(includes):
        if not isinstance(inc, str):
            f, ln = doc.locate(("include", i))
            raise ProfileError([ProfileIssue(f, ln, f"include.{i}", "must be a file path")])
        layers.append(_load_part(inc, path, doc, ("include", i), (*stack, real)))
    merged = Located({}, {})
    for layer in (*layers, doc):
        merged = _merge(merged, layer)
    # A base's own extends/include were consumed; the result keeps the top-level ones only.
    for key in ("extends", "include"):
        merged.data.pop(key, None)
        if key in doc.data:
            merged.data[key] = doc.data[key]
    return merged


def _load_part(ref: str, parent: Path, doc: Located, at: tuple[Any, ...], stack: tuple[Path, ...]) -> Located:
    try:
        target = resolve_profile_path(ref, relative_to=parent.parent)
    except ProfileError as exc:
        f, ln = doc.locate(at)
        raise ProfileError([ProfileIssue(f, ln, ".".join(map(str, at)), exc.issues[0].message)]) from None
    return _load_merged(target, stack)


def _merge(base: Located, top: Located) -> Located:
    where = dict(base.where)

    def merge(a: Any, b: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v, (*path, k)) if k in a else _take(v, (*path, k))
            if path in top.where:
                where[path] = top.where[path]
            return out
        return _take(b, path)

    def _take(v: Any, path: tuple[Any, ...]) -> Any:
        for p, loc in top.where.items():
            if p[: len(path)] == path:
                where[p] = loc
        return v

    data = merge(base.data, top.data, ())
    return Located(data, where)


def _validate(doc: Located, path: Path) -> Profile:
    data = dict(doc.data)
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_issues_from(exc, doc)) from None


def _issues_from(exc: ValidationError, doc: Located) -> list[ProfileIssue]:
    issues: list[ProfileIssue] = []
    errs = exc.errors()
    locs = [_clean_loc(tuple(e["loc"])) for e in errs]
    for err in errs:
        loc = tuple(err["loc"])
        short = _clean_loc(loc)
        if err["type"] == "too_short" and any(o[: len(short)] == short and len(o) > len(short) for o in locs):
            continue  # "jobs: at least 1 item" when the only item was invalid: the item's error says more
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _CrossCheckError):
            for sub_loc, msg in ctx_err.errors:
                f, ln = doc.locate(loc + sub_loc)
                issues.append(ProfileIssue(f, ln, _dotted(loc + sub_loc), msg))
            continue
        loc = _clean_loc(loc)
        f, ln = doc.locate(loc)
        issues.append(ProfileIssue(f, ln, _dotted(loc), _message(err, loc)))
    return issues


_TAGS = {"str", "int", "float", "bool", "gpu-name", "gpu-custom", "CustomGpu", "count", "range"}


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-branch and validator tags ("str", "CustomGpu", "function-after[...]") to locs
    out = []
    for part in loc:
        if isinstance(part, str) and (part in _TAGS or "[" in part):
            continue
        out.append(part)
    return tuple(out)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _message(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    msg = validation_message(err)
    if kind == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        hint = _suggest(str(loc[-1]), valid)
        return f"unknown key{hint}; valid keys: {', '.join(valid)}" if valid else "unknown key"
    if kind == "missing":
        return "required field is missing"
    if loc and loc[-1] == "replicas" and kind in ("int_parsing", "int_type", "greater_than_equal", "int_from_float"):
        return "must be a number of placements (1 or more), or {min: 0, max: N} for an elastic server"
    return msg


def _valid_keys(parent: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``parent`` (a location inside Profile)."""
    model: Any = Profile
    for part in parent:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            # dict value (servers.<key>) or list item: keep the model of the container's values
            continue
        model = _inner_model(field.annotation)
    return sorted(getattr(model, "model_fields", {}) or [])


def _inner_model(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
