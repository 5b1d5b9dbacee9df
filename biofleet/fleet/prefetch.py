"""Download a fleet's models into its HF cache on the login node, before GPU time is spent.

The work runs where the cache lives: :mod:`biofleet.clusterside.hub_fetch` is run with the
cluster's interpreter (``cluster.python``) through the fleet's runner — this
machine, or the login node over SSH — so the same code serves both. It uses
``huggingface_hub`` there (vLLM environments have it), resumes partial downloads,
answers at once when the Hub is unreachable instead of hanging, and reports per
model: already cached, downloaded, or missing, with sizes. While a model downloads,
the size of its cache directory is polled for progress.

Only what vLLM loads is fetched: other frameworks' weights (ONNX, GGUF, TF, Flax,
OpenVINO, Core ML) are skipped, and so are ``*.bin``/``*.pt`` copies when the repo
has safetensors (vLLM prefers those); configs and tokenizer files always come.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from biofleet.remote.base import CommandError

if TYPE_CHECKING:
    from biofleet.fleet.context import Fleet
    from biofleet.profile import Profile


@dataclass
class PrefetchResult:
    model: str
    status: str  # cached | downloaded | missing | offline | failed | no-hub-library | local-path
    path: str | None = None
    bytes: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "downloaded", "local-path")


def hub_fetch_source() -> str:
    """The source of :mod:`biofleet.clusterside.hub_fetch`: it runs with the cluster's interpreter,
    where biofleet itself may not be installed (``python -m biofleet.clusterside.hub_fetch`` where it is)."""
    from biofleet.clusterside import hub_fetch

    return Path(hub_fetch.__file__).read_text()


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'; sizes as people read them in a progress line."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fleet_models(profile: Profile) -> list[str]:
    """Hub ids of every vLLM server's model, in profile order, without duplicates."""
    seen: list[str] = []
    for spec in profile.servers.values():
        if spec.engine == "vllm" and spec.model not in seen:
            seen.append(spec.model)
    return seen


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "~", ".", "$"))


def _no_event(message: str) -> None:
    pass


def _no_progress(model: str, done: int | None, total: int) -> None:
    pass


def prefetch(fleet: Fleet, *, download: bool = True, timeout: float = 6 * 3600,
             on_event: Callable[[str], None] = _no_event,
             on_progress: Callable[[str, int | None, int], None] = _no_progress,
             poll_s: float = 2.0) -> list[PrefetchResult]:
    """Check (``download=False``) or fetch every model of the fleet, one after the other.

    ``on_event`` gets a line per step; while a model downloads, ``on_progress(model, bytes
    so far, bytes planned)`` is called every ``poll_s`` seconds from the size of its cache
    (bytes so far is None when the size could not be read).
    """
    c = fleet.profile.cluster
    # The jobs' Hub settings (a mirror in HF_ENDPOINT, a cache in HF_HUB_CACHE), so the models land
    # where the jobs look; not their offline switch: compute nodes are often offline, login nodes not.
    env = {k: v for k, v in c.env.items() if k.startswith("HF_") and k != "HF_HUB_OFFLINE"}
    if c.hf_home:
        env["HF_HOME"] = fleet.runner.expand_path(c.hf_home)
    python = fleet.runner.expand_path(c.python) if "/" in c.python else c.python
    program = hub_fetch_source()

    def step(model: str, mode: str, step_timeout: float) -> PrefetchResult:
        out = fleet.runner.run([python, "-c", program, model, mode], timeout=step_timeout, check=False, env=env or None)
        line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
        if line is None:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return PrefetchResult(model, "failed", error=f"{python} exited {out.returncode}: {err}")
        data = json.loads(line)
        return PrefetchResult(**{k: data.get(k) for k in ("model", "status", "path", "bytes", "error")})

    def cached_bytes(model: str) -> int | None:
        try:
            out = fleet.runner.run([python, "-c", program, model, "size"], timeout=30, check=False, env=env or None)
            return int(out.stdout.strip().splitlines()[-1])
        except (CommandError, ValueError, IndexError):
            return None

    def report(model: str, total: int) -> None:
        on_progress(model, cached_bytes(model), total)

    results: list[PrefetchResult] = []
    models = fleet_models(fleet.profile)
    for i, model in enumerate(models, 1):
        if is_local_path(model):
            results.append(PrefetchResult(model, "local-path"))
            continue
        if not download:
            results.append(step(model, "check", 120))
            continue
        plan = step(model, "plan", 120)
        if plan.status != "plan":
            results.append(plan)  # cached, offline, failed, ...
            continue
        total = plan.bytes or 0
        on_event(f"[{i}/{len(models)}] {model}: downloading {human_size(total)}")
        result = _while_polling(functools.partial(step, model, "download", timeout), poll_s,
                                functools.partial(report, model, total))
        if result.status == "downloaded":
            on_progress(model, total, total)
        results.append(result)
    return results


def _while_polling(work: Callable[[], PrefetchResult], every: float, poll: Callable[[], None]) -> PrefetchResult:
    """Run ``work()`` in a thread; call ``poll()`` every ``every`` seconds until it returns."""
    results: list[PrefetchResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    t = threading.Thread(target=run, name="prefetch", daemon=True)
    t.start()
    while True:
        t.join(every)
        if not t.is_alive():
            break
        poll()
    if errors:
        raise errors[0]
    return results[0]
