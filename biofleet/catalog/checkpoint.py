"""Weights as the checkpoint stores them: ``model.safetensors.index.json`` or safetensors headers.

The parameter maths of the catalogue is within a few percent for the common layouts, but a
checkpoint that is at hand is better evidence: its index records ``metadata.total_size``,
and each ``.safetensors`` file starts with an 8-byte little-endian header length and a
JSON header that lists every tensor's dtype and shape (the safetensors format spec). With
the headers we also know how many bytes are floating point (vLLM casts those to the
served dtype) and how many are packed integers or FP8 (kept as they are).

Local directories are read from disk; hub repositories only with ``allow_network`` (ranged
GETs of the header bytes, never the weights), cached beside the hub configs. Every read
is bounded: header length, number of shards, tensors per header.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "CheckpointSize",
    "checkpoint_from_dir",
    "checkpoint_from_hub",
    "size_from_headers",
]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format caps its header at 100 MB
MAX_SHARDS = 512
HUB_TIMEOUT_S = 10.0

FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_OTHER_DTYPES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                 "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}
_FLOAT_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Tensors vLLM does not load for serving: multi-token-prediction heads kept for training.
_SKIPPED = (".mtp.", "mtp_", "model.mtp")


class CheckpointSize(BaseModel):
    """Bytes of one checkpoint's weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_bytes: int = Field(gt=0)
    # From the headers only (None when just the index total is known):
    float_bytes: int | None = Field(default=None, ge=0)  # F32/F16/BF16 tensors (cast to the served dtype)
    float_dtype: str | None = None  # the float dtype holding most bytes (bfloat16, float16, float32)
    source: str = ""  # where the figure came from

    @property
    def other_bytes(self) -> int:
        return self.total_bytes - (self.float_bytes or 0)

    @property
    def gib(self) -> float:
        return self.total_bytes / 1024 ** 3


def size_from_headers(headers: Iterable[Mapping[str, Any]], source: str) -> CheckpointSize | None:
    """Sum tensor sizes over safetensors headers (dtype x shape of every entry)."""
    total = floats = 0
    by_float: dict[str, int] = {}
    for header in headers:
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, Mapping) or any(s in name for s in _SKIPPED):
                continue
            dtype = str(info.get("dtype", ""))
            shape = info.get("shape") or []
            n = 1
            for d in shape:
                n *= int(d)
            if dtype in FLOAT_DTYPES:
                nbytes = n * FLOAT_DTYPES[dtype]
                floats += nbytes
                by_float[dtype] = by_float.get(dtype, 0) + nbytes
            else:
                offsets = info.get("data_offsets")
                if isinstance(offsets, list) and len(offsets) == 2:
                    nbytes = int(offsets[1]) - int(offsets[0])
                else:
                    nbytes = int(n * _OTHER_DTYPES.get(dtype, 1))
            total += nbytes
    if total <= 0:
        return None
    main = max(by_float, key=lambda k: by_float[k]) if by_float else None
    return CheckpointSize(total_bytes=total, float_bytes=floats, float_dtype=_FLOAT_NAMES.get(main or ""),
                          source=source)


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {n} bytes exceeds {MAX_HEADER_BYTES}")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header


def _index_total(index: Mapping[str, Any]) -> int | None:
    meta = index.get("metadata") or {}
    total = meta.get("total_size") if isinstance(meta, Mapping) else None
    try:
        return int(total) if total else None
    except (TypeError, ValueError):
        return None


def checkpoint_from_dir(path: str | os.PathLike[str]) -> CheckpointSize | None:
    """The checkpoint size of a local model directory, or None if it holds no safetensors."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors"))[:MAX_SHARDS]
    if files:
        try:
            return size_from_headers((_read_header(f) for f in files),
                                     f"safetensors headers in {p} ({len(files)} file(s))")
        except (OSError, ValueError):
            pass  # a truncated or partial download: fall back to the index
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            total = _index_total(json.loads(index.read_text()))
        except (OSError, ValueError):
            total = None
        if total:
            return CheckpointSize(total_bytes=total, source=f"{index.name} in {p}")
    return None


def checkpoint_from_hub(model_id: str, cache: Path, endpoint: str = "https://huggingface.co",
                        revision: str = "main") -> CheckpointSize | None:
    """Header bytes of a hub repository's safetensors (ranged GETs), cached as JSON in ``cache``."""
    if cache.is_file():
        try:
            return CheckpointSize.model_validate_json(cache.read_text())
        except ValueError:
            pass
    import httpx

    headers: dict[str, str] = {}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = f"{endpoint.rstrip('/')}/{model_id}/resolve/{revision}/"
    result: CheckpointSize | None = None
    with httpx.Client(timeout=HUB_TIMEOUT_S, follow_redirects=True, headers=headers) as client:
        resp = client.get(base + "model.safetensors.index.json")
        if resp.status_code == 200:
            index = resp.json()
            shards = sorted(set((index.get("weight_map") or {}).values()))[:MAX_SHARDS]
            try:
                result = size_from_headers((_remote_header(client, base + s) for s in shards),
                                           f"safetensors headers of {model_id} on the hub ({len(shards)} shards)")
            except (httpx.HTTPError, ValueError):
                total = _index_total(index)
                result = CheckpointSize(total_bytes=total, source=f"model.safetensors.index.json of {model_id}") \
                    if total else None
        elif resp.status_code == 404:
            try:
                result = size_from_headers([_remote_header(client, base + "model.safetensors")],
                                           f"model.safetensors header of {model_id} on the hub")
            except httpx.HTTPStatusError:
                result = None
        else:
            resp.raise_for_status()
    if result is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(result.model_dump_json())
        tmp.replace(cache)
    return result


def _remote_header(client: Any, url: str) -> dict[str, Any]:
    resp = client.get(url, headers={"Range": "bytes=0-7"})
    resp.raise_for_status()
    if len(resp.content) < 8:
        raise ValueError(f"{url}: short read of the safetensors header length")
    (n,) = struct.unpack("<Q", resp.content[:8])
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{url}: safetensors header of {n} bytes exceeds {MAX_HEADER_BYTES}")
    resp = client.get(url, headers={"Range": f"bytes=8-{8 + n - 1}"})
    resp.raise_for_status()
    header = json.loads(resp.content[:n])
    if not isinstance(header, dict):
        raise ValueError(f"{url}: safetensors header is not a JSON object")
    return header
