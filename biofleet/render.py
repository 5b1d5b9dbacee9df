"""Profile -> sbatch scripts.

One Jinja environment with ``StrictUndefined``; every value that reaches the
shell goes through a quoting filter (``q``: single-quoted literal, ``qpath``: a
path in which only ``~``, ``$HOME`` and ``$USER`` expand, ``qjoin``: an argv).
The server command lines are built here as argv lists, never as strings.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from biofleet import __version__
from biofleet.backends.base import ScriptDialect
from biofleet.backends.slurm import SLURM
from biofleet.errors import RenderError
from biofleet.paths import PROXY_MODULE, FleetPaths
from biofleet.profile import SHELL_PATH, Instance, JobSpec, Profile
from biofleet.resources import templates_dir

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
PORT_PLACEHOLDER = "@PORT@"


@dataclass(frozen=True)
class PathArg:
    """An argv element that is a path on the cluster side (``~``/``$HOME``/``$USER`` expand)."""

    value: str

    def __str__(self) -> str:
        return self.value


def quote(value: Any) -> str:
    if isinstance(value, PathArg):
        return quote_path(value.value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def quote_path(value: Any) -> str:
    """Double-quoted path with only ~, $HOME and $USER left to the shell."""
    s = str(value)
    if not SHELL_PATH.match(s):
        return shlex.quote(s)
    if s == "~" or s.startswith("~/"):
        s = "$HOME" + s[1:]
    elif "~" in s:
        return shlex.quote(s)
    return f'"{s}"'


def quote_join(argv: Iterable[Any]) -> str:
    return " ".join(quote(a) for a in argv)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = quote
    env.filters["qpath"] = quote_path
    env.filters["qjoin"] = quote_join
    return env


# ---------------------------------------------------------------------------


def local_fleet_dir(profile: Profile) -> str:
    """The fleet directory with ~/$HOME/$USER expanded on *this* machine."""
    base = os.path.expandvars(os.path.expanduser(profile.cluster.workdir))
    return str(Path(base) / profile.name)


def server_argv(inst: Instance, profile: Profile, fleet_dir: str) -> list[Any]:
    spec = inst.spec
    c = profile.cluster
    names = [inst.served_name, *spec.aliases]
    model: Any = PathArg(spec.model) if spec.model.startswith(("/", "~", ".", "$")) else spec.model
    if spec.engine == "mock":
        argv: list[Any] = [
            "python3", "-m", "biofleet.devtools.mock_engine",
            "--host", c.bind_host, "--port", PORT_PLACEHOLDER,
            "--served-model-name", *names, "--kind", spec.kind,
        ]
        if spec.max_model_len and spec.max_model_len != "auto":  # the mock engine serves its default on auto
            argv += ["--max-model-len", str(spec.max_model_len)]
        return _with_env(spec.env, argv + list(spec.extra_args))

    argv = [PathArg(c.python), "-m", VLLM_MODULE, "--model", model, "--served-model-name", *names,
            "--host", c.bind_host, "--port", PORT_PLACEHOLDER]
    if spec.dtype != "auto":
        argv += ["--dtype", spec.dtype]
    if spec.kind == "embed":
        # vLLM >= 0.10 selects the pooling runner explicitly (replaces --task embed).
        argv += ["--runner", "pooling"]
    if spec.max_model_len:
        argv += ["--max-model-len", str(spec.max_model_len)]
    argv += ["--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}"]
    if spec.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    if spec.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", spec.kv_cache_dtype]
    if spec.mamba_ssm_cache_dtype != "auto":
        argv += ["--mamba-ssm-cache-dtype", spec.mamba_ssm_cache_dtype]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    if spec.max_num_seqs:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += list(spec.extra_args)
    if c.container:
        binds = [PathArg(fleet_dir)]
        if c.hf_home:
            binds.append(PathArg(c.hf_home))
        binds += [PathArg(b) for b in c.container_binds]
        prefix: list[Any] = ["apptainer", "exec", "--nv"]
        for b in binds:
            prefix += ["--bind", b]
        prefix.append(PathArg(c.container))
        argv = prefix + argv
    return _with_env(spec.env, argv)


def _with_env(env: dict[str, str], argv: list[Any]) -> list[Any]:
    # Per-server variables (e.g. an attention backend) must not leak to co-located servers.
    if not env:
        return argv
    return ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]


def _check_fleet_dir(fleet_dir: str) -> None:
    if re.search(r"\s", fleet_dir):
        raise RenderError(
            f"fleet directory {fleet_dir!r} contains whitespace, which a batch script's output option cannot "
            f"take; set cluster.workdir to a path without spaces"
        )


@dataclass
class RenderedServer:
    name: str
    model: str
    kind: str
    engine: str
    served: str
    port: str
    gpus: str  # the plan's GPU indices on the node ("1", "2,3"); "" for a CPU-only job
    max_restarts: int
    argv: list[Any] = field(default_factory=list)


def render_job(profile: Profile, job: JobSpec, fleet_dir: str, dialect: ScriptDialect = SLURM) -> str:
    _check_fleet_dir(fleet_dir)
    insts = [i for i in profile.instances() if i.job == job.name]
    tasks = []
    on_gpus = job.gpu is not None
    for t in range(len(job.nodes)):
        mine = [i for i in insts if i.task == t]
        servers = [
            RenderedServer(
                name=i.name, model=i.spec.model, kind=i.spec.kind, engine=i.spec.engine,
                served=",".join([i.served_name, *i.spec.aliases]),
                port=str(i.spec.port) if i.spec.port else "auto",
                gpus=",".join(map(str, i.gpus)) if on_gpus else "",
                max_restarts=i.spec.max_restarts,
                argv=server_argv(i, profile, fleet_dir),
            )
            for i in mine
        ]
        # The job script checks the allocation covers every GPU index the plan uses on this node.
        needed = max((g + 1 for i in mine for g in i.gpus), default=0) if on_gpus else 0
        tasks.append({"index": t, "servers": servers, "gpus_needed": needed})
    c = profile.cluster
    ctx = {
        **_common(profile, fleet_dir, dialect),
        "job": job.name,
        "bind_host": c.bind_host,
        "advertise": c.advertise,
        "hf_home": c.hf_home,
        "secret_files": sorted(c.secret_files.items()),
        "directives": dialect.directives(profile, job, fleet_dir),
        "tasks": tasks,
    }
    return _env().get_template("job.sbatch.j2").render(**ctx)


def render_proxy_job(profile: Profile, fleet_dir: str, dialect: ScriptDialect = SLURM) -> str:
    """The proxy as a job on the profile's CPU partition."""
    _check_fleet_dir(fleet_dir)
    px = profile.proxy
    paths = FleetPaths(fleet_dir)
    ctx = {
        **_common(profile, fleet_dir, dialect),
        "host": px.host,
        "port": str(px.port) if px.port else "auto",
        "advertise": profile.cluster.advertise,
        "argv": ["python3", "-m", PROXY_MODULE,
                 *paths.proxy_args(px.host, PORT_PLACEHOLDER, px, elastic=bool(profile.elastic_servers()))],
        "directives": dialect.directives(profile, None, fleet_dir),
    }
    return _env().get_template("proxy.sbatch.j2").render(**ctx)


def _common(profile: Profile, fleet_dir: str, dialect: ScriptDialect) -> dict[str, Any]:
    """What every script of a fleet starts with: who rendered it, the job's variables, jobkit."""
    c = profile.cluster
    return {
        "version": __version__,
        "profile": profile.name,
        "fleet": profile.name,
        "fleet_dir": fleet_dir,
        "env": sorted(c.env.items()),
        "setup": list(c.setup),
        "job_environment": dialect.job_environment(),
        "jobkit": jobkit_source(),
    }


def jobkit_source() -> str:
    """The source of :mod:`biofleet.clusterside.jobkit`, which every job script carries."""
    from biofleet.clusterside import jobkit

    return Path(jobkit.__file__).read_text()


def render_fleet(profile: Profile, fleet_dir: str | None = None, dialect: ScriptDialect = SLURM) -> dict[str, str]:
    """``{file name: script text}`` for every job of the profile."""
    fleet_dir = fleet_dir or local_fleet_dir(profile)
    scripts = {f"{job.name}.sbatch": render_job(profile, job, fleet_dir, dialect) for job in profile.jobs}
    if profile.proxy.run == "slurm":
        scripts["proxy.sbatch"] = render_proxy_job(profile, fleet_dir, dialect)
    return scripts


def write_scripts(scripts: dict[str, str], out: Path) -> list[Path]:
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in scripts.items():
            p = out / name
            p.write_text(text)
            p.chmod(0o755)
            paths.append(p)
    except OSError as exc:
        raise RenderError(f"cannot write the scripts into {out}: {exc.strerror or exc}; give --out a directory "
                          "you can write") from None
    return paths
