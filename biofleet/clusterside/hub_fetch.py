"""Check or download one model into the Hugging Face cache, on the machine where the cache lives.

Run by ``biofleet prefetch`` with the cluster's interpreter (``cluster.python``), locally or on
the login node over SSH; it needs ``huggingface_hub`` there (vLLM environments have it) and
nothing of biofleet::

    python -m biofleet.clusterside.hub_fetch MODEL check|plan|download|size

It prints one JSON line ``{"model", "status", ...}`` (``size``: one number, the bytes of this
model's cache, partial downloads included). Only what vLLM loads is fetched: other frameworks'
weights are skipped, and ``*.bin``/``*.pt`` copies when the repo has safetensors.
"""

import fnmatch
import json
import os
import sys
from typing import Any, List, NoReturn, Optional, Tuple

# Other frameworks' weights vLLM never reads; *.bin/*.pt only when there is no safetensors copy.
OTHER_FORMATS = ["*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.gguf", "*.msgpack", "*.h5", "*.ot",
                 "*.tflite", "coreml/*", "*.mlmodel", "*.mlpackage/*"]
TORCH_COPIES = ["*.bin", "*.pt", "*.pth"]


def wanted(names: List[str]) -> Tuple[List[str], List[str]]:
    """(ignore patterns, the names vLLM would read) for a repo's file names."""
    ignore = OTHER_FORMATS + (TORCH_COPIES if any(n.endswith(".safetensors") for n in names) else [])
    return ignore, [n for n in names if not any(fnmatch.fnmatch(n, p) for p in ignore)]


def size_of(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size  # follows the blob symlinks
            except OSError:
                pass
    return total


def cache_dir(repo: str, *parts: str) -> str:
    from huggingface_hub import constants

    return os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"), *parts)


def say(repo: str, **kw: Any) -> NoReturn:
    print(json.dumps(dict(model=repo, **kw)))
    sys.exit(0)


def blob_bytes(repo: str) -> int:
    """Bytes in this repo's cache, partial downloads included."""
    blobs = cache_dir(repo, "blobs")
    total = 0
    for f in os.listdir(blobs) if os.path.isdir(blobs) else []:
        try:
            total += os.stat(os.path.join(blobs, f)).st_size
        except OSError:
            pass
    return total


def cached(repo: str, ignore: Optional[List[str]] = None) -> Optional[str]:
    from huggingface_hub import snapshot_download

    try:
        path: str = snapshot_download(repo, local_files_only=True, ignore_patterns=ignore)
        return path
    except Exception:
        return None


def failed(repo: str, exc: Exception) -> NoReturn:
    name = type(exc).__name__
    offline = any(k in name for k in ("Connect", "Timeout", "Offline", "LocalEntryNotFound"))
    say(repo, status="offline" if offline else "failed", error=name + ": " + " ".join(str(exc).split())[:300])


def main(argv: List[str]) -> None:
    repo, mode = argv[0], argv[1]
    if mode == "size":
        print(blob_bytes(repo))
        return
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        say(repo, status="no-hub-library")
    path = cached(repo)
    if path is None:  # complete for what vLLM reads? (as this prefetch leaves it: other formats skipped)
        snaps = cache_dir(repo, "snapshots")
        names = [f for _r, _d, fs in os.walk(snaps) for f in fs]
        path = cached(repo, wanted(names)[0]) if names else None
    if path is not None:
        say(repo, status="cached", path=path, bytes=size_of(path))
    if mode == "check":
        say(repo, status="missing")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        say(repo, status="offline", error="HF_HUB_OFFLINE=1")
    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=10)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        ignore, keep = wanted(list(sizes))
        if mode == "plan":
            say(repo, status="plan", bytes=sum(sizes[n] for n in keep), files=len(keep),
                skipped=len(sizes) - len(keep))
        path = snapshot_download(repo, ignore_patterns=ignore, etag_timeout=10)
        say(repo, status="downloaded", path=path, bytes=size_of(path))
    except Exception as exc:
        failed(repo, exc)


if __name__ == "__main__":
    main(sys.argv[1:])
