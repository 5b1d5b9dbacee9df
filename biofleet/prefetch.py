"""Download a fleet's models into its HF cache on the login node, before GPU time is spent.

The work runs where the cache lives: a small Python program is run with the
cluster's interpreter (``cluster.python``) through the fleet's runner — this
machine, or the login node over SSH — so the same code serves both. It uses
``huggingface_hub`` there (vLLM environments have it), resumes partial downloads,
answers at once when the Hub is unreachable instead of hanging, and reports per
model: already cached, downloaded, or missing, with sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Runs on the cluster side: stdlib + huggingface_hub only. argv[1]: model id; argv[2]: "1" to download.
_SCRIPT = r"""
import json, os, sys
repo, download = sys.argv[1], sys.argv[2] == "1"
def size_of(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size  # follows the blob symlinks
            except OSError:
                pass
    return total
try:
    from huggingface_hub import snapshot_download
except ImportError:
    print(json.dumps({"model": repo, "status": "no-hub-library"}))
    sys.exit(0)
try:
    path = snapshot_download(repo, local_files_only=True)
    print(json.dumps({"model": repo, "status": "cached", "path": path, "bytes": size_of(path)}))
    sys.exit(0)
except Exception:
    pass
if not download:
    print(json.dumps({"model": repo, "status": "missing"}))
    sys.exit(0)
if os.environ.get("HF_HUB_OFFLINE") == "1":
    print(json.dumps({"model": repo, "status": "offline", "error": "HF_HUB_OFFLINE=1"}))
    sys.exit(0)
try:
    path = snapshot_download(repo, etag_timeout=10)
    print(json.dumps({"model": repo, "status": "downloaded", "path": path, "bytes": size_of(path)}))
except Exception as exc:
    name = type(exc).__name__
    offline = any(k in name for k in ("Connect", "Timeout", "Offline", "LocalEntryNotFound"))
    print(json.dumps({"model": repo, "status": "offline" if offline else "failed", "error": name + ": " + str(exc)[:300]}))
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


def fleet_models(profile) -> list[str]:
    """Hub ids of every vLLM server's model, in profile order, without duplicates."""
    seen: list[str] = []
    for spec in profile.servers.values():
        if spec.engine == "vllm" and spec.model not in seen:
            seen.append(spec.model)
    return seen


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "~", ".", "$"))


def prefetch(fleet, *, download: bool = True, timeout: float = 6 * 3600, on_event=lambda m: None) -> list[PrefetchResult]:
    from biofleet.fleet import _cluster_path

    c = fleet.profile.cluster
    env = {}
    if c.hf_home:
        env["HF_HOME"] = _cluster_path(fleet.runner, c.hf_home)
    python = _cluster_path(fleet.runner, c.python) if "/" in c.python else c.python
    results = []
    models = fleet_models(fleet.profile)
    for i, model in enumerate(models, 1):
        if is_local_path(model):
            results.append(PrefetchResult(model, "local-path"))
            continue
        on_event(f"[{i}/{len(models)}] {model} ...")
        out = fleet.runner.run([python, "-c", _SCRIPT, model, "1" if download else "0"],
                               timeout=timeout, check=False, env=env or None)
        line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
        if line is None:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            results.append(PrefetchResult(model, "failed", error=f"{python} exited {out.returncode}: {err}"))
            continue
        results.append(PrefetchResult(**json.loads(line)))
    return results
