"""GPU catalogue: memory as CUDA reports it, compute capability, price, SLURM gres type.

Sources (facts only):
- "visible_gib" is what ``torch.cuda.get_device_properties().total_memory`` reports, which is
  what vLLM multiplies by ``gpu_memory_utilization``. Logged figures come from
  shared/calibration/vllm_memory_rules.md ("Visible total memory seen in logs"):
  T4 14.56/14.57/14.74, A10 22.07, A100-40GB 39.38/39.50, RTX 3090 23.58, RTX 2080 Ti 10.73,
  L4 23034 MiB in nvidia-smi (vllm#4959).
- Where no log is at hand the figure is an estimate: nvidia-smi total MiB / 1024 minus the
  ~0.42 GiB the driver keeps (the gap seen on T4: 15360 MiB -> 14.57 GiB, and A10:
  23028 MiB -> 22.07 GiB). Each entry's comment says which.
- Compute capabilities: NVIDIA's CUDA GPU table (developer.nvidia.com/cuda-gpus).
- Prices: seed 001 "Available GPU Configurations" (GCP: T4 $0.35, L4 $0.50, A10G $1.00,
  A100-40GB $3.00 per hour); others are typical public-cloud on-demand per-GPU figures
  (late 2025), marked "estimate".
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GpuSpec", "UnknownGpuError", "GPUS", "get_gpu", "custom_gpu", "parse_compute_capability"]

# Without a log we estimate what CUDA reports from the marketing size: the driver and
# ECC reservation take ~7% of a 16 GB card (T4: 16 GB marketing -> 14.57 GiB visible).
CUSTOM_VISIBLE_FRACTION = 0.93


class GpuSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aliases: tuple[str, ...] = ()
    memory_gib: float = Field(gt=0)  # marketing size ("16 GB")
    visible_gib: float = Field(gt=0)  # what CUDA / torch reports as total memory
    compute_capability: tuple[int, int]
    price_per_hour: float = Field(ge=0)  # USD, on-demand, one GPU
    gres_type: str  # SLURM GRES type, lower case (gpu:<type>:N)
    note: str = ""  # where the figures came from

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _cc(cls, v: object) -> object:
        return parse_compute_capability(v) if isinstance(v, (str, float)) else v

    @property
    def cc(self) -> float:
        """Compute capability as a number (7.5, 8.9, ...)."""
        return self.compute_capability[0] + self.compute_capability[1] / 10

    @property
    def cc_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def supports_bf16(self) -> bool:  # vLLM _check_if_gpu_supports_dtype: CC >= 8.0
        return self.compute_capability >= (8, 0)

    @property
    def supports_fp8(self) -> bool:  # native FP8 W8A8 compute: Ada (8.9) / Hopper (9.0)
        return self.compute_capability >= (8, 9)

    @property
    def supports_flash_attn2(self) -> bool:  # FlashAttention-2 / FlashInfer: Ampere+
        return self.compute_capability >= (8, 0)

    @property
    def vllm_supported(self) -> bool:  # vLLM CUDA requires CC >= 7.0 (Pascal refused)
        return self.compute_capability >= (7, 0)

    @property
    def supports_marlin(self) -> bool:  # awq_marlin / gptq_marlin on most builds
        return self.compute_capability >= (8, 0)


def parse_compute_capability(v: object) -> tuple[int, int]:
    """'7.5', '75', 7.5 or (7, 5) -> (7, 5)."""
    if isinstance(v, tuple) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    s = str(v).strip()
    m = re.fullmatch(r"(\d+)\.(\d)", s) or re.fullmatch(r"(\d)(\d)", s)
    if not m:
        raise ValueError(f"compute capability must look like '8.6' (got {v!r})")
    return (int(m.group(1)), int(m.group(2)))


def _g(name, aliases, memory, visible, cc, price, gres, note) -> GpuSpec:
    return GpuSpec(name=name, aliases=aliases, memory_gib=memory, visible_gib=visible,
                   compute_capability=cc, price_per_hour=price, gres_type=gres, note=note)


_CATALOG = (
    _g("T4", ("tesla-t4", "nvidia-t4", "t4-16gb"), 16, 14.57, (7, 5), 0.35, "t4",
       "visible: vLLM logs 14.56/14.57 GiB (Colab); price: seed 001 (GCP)"),
    _g("L4", ("nvidia-l4", "l4-24gb"), 24, 22.06, (8, 9), 0.50, "l4",
       "visible: nvidia-smi 23034 MiB (vllm#4959) minus ~0.42 GiB, matches the 22.06 GiB 24 GB-card log; "
       "price: seed 001 (GCP)"),
    _g("A10G", ("a10g-24gb", "nvidia-a10g"), 24, 22.07, (8, 6), 1.00, "a10g",
       "visible: same 23028 MiB board as A10 (log 22.07 GiB); price: seed 001"),
    _g("A10", ("nvidia-a10", "a10-24gb"), 24, 22.07, (8, 6), 1.00, "a10",
       "visible: vLLM log on OCI 22.07 GiB; price: estimate (as A10G)"),
    _g("V100", ("v100-16gb", "tesla-v100", "v100-sxm2-16gb"), 16, 15.77, (7, 0), 2.48, "v100",
       "visible: estimate from nvidia-smi 16160 MiB; price: estimate (AWS p3 per GPU ~$3.06, GCP $2.48)"),
    _g("V100-32GB", ("v100-32gb", "v100s"), 32, 31.74, (7, 0), 2.48, "v100",
       "visible: estimate from nvidia-smi 32510 MiB; price: estimate"),
    _g("A100-40GB", ("a100", "a100-40", "a100-sxm4-40gb", "a100-pcie-40gb"), 40, 39.38, (8, 0), 3.00, "a100",
       "visible: vLLM logs 39.38 and 39.50 GiB (smaller taken); price: seed 001"),
    _g("A100-80GB", ("a100-80", "a100-sxm4-80gb", "a100-pcie-80gb", "a100_80gb"), 80, 79.15, (8, 0), 3.70, "a100",
       "visible: estimate (OOM messages commonly print 79.15 GiB; case #27's +0.25 util -> +19.82 GiB "
       "gives ~79.3); price: estimate"),
    _g("H100-80GB", ("h100", "h100-80", "h100-sxm", "h100-pcie", "h100-sxm5-80gb"), 80, 79.1, (9, 0), 4.50, "h100",
       "visible: estimate (nvidia-smi 81559 MiB; torch reports ~79.1 GiB); price: estimate"),
    _g("H200", ("h200-141gb", "h200-sxm"), 141, 139.8, (9, 0), 6.00, "h200",
       "visible: estimate (nvidia-smi 143771 MiB minus reservation); price: estimate"),
    _g("L40S", ("l40s-48gb",), 48, 44.4, (8, 9), 1.80, "l40s",
       "visible: estimate (nvidia-smi 46068 MiB); price: estimate"),
    _g("RTX-3090", ("3090", "rtx3090", "geforce-rtx-3090"), 24, 23.58, (8, 6), 0.30, "rtx3090",
       "visible: vLLM log 23.58 GiB; price: estimate (community cloud)"),
    _g("RTX-2080Ti", ("2080ti", "rtx2080ti", "rtx-2080-ti", "geforce-rtx-2080-ti"), 11, 10.73, (7, 5), 0.15,
       "rtx2080ti", "visible: vLLM log 10.73 GiB; price: estimate (community cloud)"),
    _g("P40", ("tesla-p40", "p40-24gb"), 24, 23.87, (6, 1), 0.20, "p40",
       "visible: estimate from nvidia-smi 24451 MiB; Pascal: not supported by vLLM; price: estimate "
       "(no current public on-demand offer)"),
    _g("P100", ("tesla-p100", "p100-16gb"), 16, 15.89, (6, 0), 1.46, "p100",
       "visible: estimate from nvidia-smi 16280 MiB; price: GCP list (estimate)"),
)

GPUS: Mapping[str, GpuSpec] = MappingProxyType({g.name: g for g in _CATALOG})


def _norm(s: str) -> str:
    return re.sub(r"[\s_]+", "-", s.strip().lower())


_INDEX: dict[str, GpuSpec] = {}
for _gpu in _CATALOG:
    for _key in (_gpu.name, *_gpu.aliases):
        _INDEX.setdefault(_norm(_key), _gpu)


class UnknownGpuError(KeyError):
    """A GPU name that is not in the catalogue; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def get_gpu(name: str) -> GpuSpec:
    """Catalogue lookup, case-insensitive, by canonical name or alias (``h100``, ``a100``, ``t4``)."""
    key = _norm(name)
    for k in (key, key.removeprefix("nvidia-"), key.removeprefix("tesla-")):
        if k in _INDEX:
            return _INDEX[k]
    known = ", ".join(GPUS)
    raise UnknownGpuError(
        f"unknown GPU {name!r}; known: {known}. For another card give its memory and compute "
        f"capability (gpu: {{memory_gib: 48, compute_capability: '8.6'}})"
    )


def custom_gpu(memory_gib: float, compute_capability: str | tuple[int, int] | float,
               name: str = "custom", *, price_per_hour: float = 0.0, gres_type: str | None = None) -> GpuSpec:
    """A GPU the catalogue lacks. Visible memory is estimated as memory x 0.93 (see module doc)."""
    cc = parse_compute_capability(compute_capability)
    return GpuSpec(
        name=name, memory_gib=memory_gib, visible_gib=round(memory_gib * CUSTOM_VISIBLE_FRACTION, 2),
        compute_capability=cc, price_per_hour=price_per_hour,
        gres_type=gres_type or re.sub(r"[^a-z0-9]+", "", name.lower()) or "gpu",
        note=f"custom: visible estimated as {CUSTOM_VISIBLE_FRACTION} x {memory_gib} GiB",
    )
