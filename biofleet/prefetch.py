"""Download a fleet's models into its HF cache on the login node, before GPU time is spent.

The work runs where the cache lives: a small Python program is run with the
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

import json
import threading
from dataclasses import dataclass

from biofleet.slurm.runner import CommandError

# Runs on the cluster side: stdlib + huggingface_hub only.
# argv[1]: model id; argv[2]: check | plan | download | size. Prints one JSON line (size: a number).
_SCRIPT = r"""
import fnmatch, json, os, sys
repo, mode = sys.argv[1], sys.argv[2]
if mode == "size":  # bytes in this repo's cache, partial downloads included
    from huggingface_hub import constants
    blobs = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"), "blobs")
    total = 0
    for f in (os.listdir(blobs) if os.path.isdir(blobs) else []):
        try:
            total += os.stat(os.path.join(blobs, f)).st_size
        except OSError:
            pass
    print(total)
    sys.exit(0)
def size_of(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size  # follows the blob symlinks
            except OSError:
                pass
    return total
def say(**kw):
    print(json.dumps(dict(model=repo, **kw)))
    sys.exit(0)
# Other frameworks' weights vLLM never reads; *.bin/*.pt only when there is no safetensors copy.
OTHER = ["*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.gguf", "*.msgpack", "*.h5", "*.ot",
         "*.tflite", "coreml/*", "*.mlmodel", "*.mlpackage/*"]
def wanted(names):
    ignore = OTHER + (["*.bin", "*.pt", "*.pth"] if any(n.endswith(".safetensors") for n in names) else [])
    return ignore, [n for n in names if not any(fnmatch.fnmatch(n, p) for p in ignore)]
try:
    from huggingface_hub import HfApi, snapshot_download
except ImportError:
    say(status="no-hub-library")
def cached(ignore=None):
    try:
        return snapshot_download(repo, local_files_only=True, ignore_patterns=ignore)
    except Exception:
        return None
path = cached()
if path is None:  # complete for what vLLM reads? (as this prefetch leaves it: other formats skipped)
    from huggingface_hub import constants
    snaps = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"), "snapshots")
    names = [f for _r, _d, fs in os.walk(snaps) for f in fs]
    path = cached(wanted(names)[0]) if names else None
if path is not None:
    say(status="cached", path=path, bytes=size_of(path))
if mode == "check":
    say(status="missing")
if os.environ.get("HF_HUB_OFFLINE") == "1":
    say(status="offline", error="HF_HUB_OFFLINE=1")
def failed(exc):
    name = type(exc).__name__
    offline = any(k in name for k in ("Connect", "Timeout", "Offline", "LocalEntryNotFound"))
    say(status="offline" if offline else "failed", error=name + ": " + " ".join(str(exc).split())[:300])
try:
    info = HfApi().model_info(repo, files_metadata=True, timeout=10)
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    ignore, keep = wanted(list(sizes))
    if mode == "plan":
        say(status="plan", bytes=sum(sizes[n] for n in keep), files=len(keep), skipped=len(sizes) - len(keep))
    path = snapshot_download(repo, ignore_patterns=ignore, etag_timeout=10)
    say(status="downloaded", path=path, bytes=size_of(path))
except Exception as exc:
    failed(exc)
"""


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


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'; sizes as people read them in a progress line."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fleet_models(profile) -> list[str]:
    """Hub ids of every vLLM server's model, in profile order, without duplicates."""
    seen: list[str] = []
    for spec in profile.servers.values():
        if spec.engine == "vllm" and spec.model not in seen:
            seen.append(spec.model)
    return seen


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "~", ".", "$"))


def prefetch(fleet, *, download: bool = True, timeout: float = 6 * 3600, on_event=lambda m: None,
             on_progress=lambda model, done, total: None, poll_s: float = 2.0) -> list[PrefetchResult]:
    """Check (``download=False``) or fetch every model of the fleet, one after the other.

    ``on_event`` gets a line per step; while a model downloads, ``on_progress(model, bytes
    so far, bytes planned)`` is called every ``poll_s`` seconds from the size of its cache.
    """
    from biofleet.fleet import _cluster_path

    c = fleet.profile.cluster
    # The jobs' Hub settings (a mirror in HF_ENDPOINT, a cache in HF_HUB_CACHE), so the models land
    # where the jobs look; not their offline switch: compute nodes are often offline, login nodes not.
    env = {k: v for k, v in c.env.items() if k.startswith("HF_") and k != "HF_HUB_OFFLINE"}
    if c.hf_home:
        env["HF_HOME"] = _cluster_path(fleet.runner, c.hf_home)
    python = _cluster_path(fleet.runner, c.python) if "/" in c.python else c.python

    def step(model: str, mode: str, step_timeout: float) -> PrefetchResult:
        out = fleet.runner.run([python, "-c", _SCRIPT, model, mode], timeout=step_timeout, check=False, env=env or None)
        line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
        if line is None:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return PrefetchResult(model, "failed", error=f"{python} exited {out.returncode}: {err}")
        data = json.loads(line)
        return PrefetchResult(**{k: data.get(k) for k in ("model", "status", "path", "bytes", "error")})

    def cached_bytes(model: str) -> int | None:
        try:
            out = fleet.runner.run([python, "-c", _SCRIPT, model, "size"], timeout=30, check=False, env=env or None)
            return int(out.stdout.strip().splitlines()[-1])
        except (CommandError, ValueError, IndexError):
            return None

    results = []
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
        result = _while_polling(lambda m=model: step(m, "download", timeout), poll_s,
                                lambda m=model: on_progress(m, cached_bytes(m), total))
        if result.status == "downloaded":
            on_progress(model, total, total)
        results.append(result)
    return results


def _while_polling(work, every: float, poll) -> PrefetchResult:
    """Run ``work()`` in a thread; call ``poll()`` every ``every`` seconds until it returns."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=run, name="prefetch", daemon=True)
    t.start()
    while True:
        t.join(every)
        if not t.is_alive():
            break
        poll()
    if "error" in box:
        raise box["error"]
    return box["result"]
