"""GPU catalogue: memory as CUDA reports it, compute capability, price, SLURM gres type.

Sources (facts only):
- "visible_gib" is what ``torch.cuda.get_device_properties().total_memory`` reports, which is
  what vLLM multiplies by ``gpu_memory_utilization``. Logged figures come from the vLLM start-up
  logs of the cases in tests/data (each case cites its source):
  T4 14.56/14.57/14.74, A10 22.07, A100-40GB 39.38/39.50, RTX 3090 23.58, RTX 2080 Ti 10.73,
  L4 23034 MiB in nvidia-smi (vllm#4959).
- Where no log is at hand the figure is an estimate: nvidia-smi total MiB / 1024 minus the
  ~0.42 GiB the driver keeps (the gap seen on T4: 15360 MiB -> 14.57 GiB, and A10:
  23028 MiB -> 22.07 GiB). Each entry's comment says which.
- Compute capabilities: NVIDIA's CUDA GPU table (developer.nvidia.com/cuda-gpus).
- Prices: the GCP on-demand prices the original fleet plans were costed with (T4 $0.35, L4 $0.50,
  A10G $1.00, A100-40GB $3.00 per hour); others are typical public-cloud on-demand per-GPU figures
  (late 2025), marked "estimate".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, field_validator

# No GPU has more memory than this (the largest have ~0.3 TiB); it also keeps inf and NaN out of the maths
MAX_GPU_GIB = 4096

__all__ = ["GPUS", "GpuSpec", "UnknownGpuError", "custom_gpu", "get_gpu", "parse_compute_capability"]

# Without a log we estimate what CUDA reports from the marketing size: the driver and
# ECC reservation take ~7% of a 16 GB card (T4: 16 GB marketing -> 14.57 GiB visible).
CUSTOM_VISIBLE_FRACTION = 0.93
_H100_LOCAL_GIB = 1024 * 2048 * 132 / 1024 ** 3  # 0.258 GiB of thread-local memory on an H100
_CONTEXT_FIXED_GIB = 0.51 - _H100_LOCAL_GIB  # the measured 0.51 GiB minus that


class GpuSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aliases: tuple[str, ...] = ()
    memory_gib: float = Field(gt=0, le=MAX_GPU_GIB)  # marketing size ("16 GB")
    visible_gib: float = Field(gt=0, le=MAX_GPU_GIB)  # what CUDA / torch reports as total memory
    compute_capability: tuple[int, int]
    price_per_hour: float = Field(ge=0)  # USD, on-demand, one GPU
    gres_type: str  # SLURM GRES type, lower case (gpu:<type>:N)
    note: str = ""  # where the figures came from
    sm_count: int | None = Field(default=None, gt=0)  # streaming multiprocessors (None: unknown)
    # GPU-to-GPU link between the cards of one node: True NVLink (SXM / HGX boards), False PCIe only,
    # None unknown. Tensor parallelism's communication memory depends on it (fitcheck.non_torch_gib).
    nvlink: bool | None = None
    mig: str | None = None  # a MIG instance of this card: its profile ("3g.40gb"); see mig_slice
    # memory shared with the CPU (an integrated GPU: CUDA's is_integrated): vLLM reads its free memory from the
    # OS's available RAM (fitcheck: unified-memory)
    unified_memory: bool = False

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

    @property
    def cuda_context_gib(self) -> float:
        """Memory one process's CUDA context takes before it allocates anything.

        Measured 0.51 GiB on an H100 and an H200 (torch 2.11 / CUDA 13). Most of what grows with
        the card is local memory the driver reserves for every resident thread (1 KiB default
        stack x max threads per SM x SMs = 0.26 GiB on 132 SMs x 2048 threads); the rest, ~0.25
        GiB, is fixed. Cards of unknown SM count scale the per-thread part by memory size."""
        threads = {(7, 5): 1024, (8, 6): 1536, (8, 7): 1536, (8, 9): 1536}.get(self.compute_capability, 2048)
        if self.compute_capability >= (12, 0):
            threads = 1536
        if self.sm_count:
            local = 1024 * threads * self.sm_count / 1024 ** 3
        else:
            local = _H100_LOCAL_GIB * min(self.visible_gib / 79.18, 1.0)
        return _CONTEXT_FIXED_GIB + local


def parse_compute_capability(v: object) -> tuple[int, int]:
    """'7.5', '75', 7.5 or (7, 5) -> (7, 5)."""
    if isinstance(v, tuple) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    s = str(v).strip()
    m = re.fullmatch(r"(\d+)\.(\d)", s) or re.fullmatch(r"(\d)(\d)", s)
    if not m:
        raise ValueError(f"compute capability must look like '8.6' (got {v!r})")
    return (int(m.group(1)), int(m.group(2)))


# Streaming multiprocessors per card (NVIDIA data sheets); the CUDA context reserves local
# memory for every thread slot of every SM, so it grows with them (see cuda_context_gib).
_SMS = {"T4": 40, "L4": 58, "A10G": 80, "A10": 72, "V100": 80, "V100-32GB": 80, "A100-40GB": 108,
        "A100-80GB": 108, "H100-80GB": 132, "H200": 132, "B200": 148, "L40S": 142, "RTX-3090": 82,
        "RTX-4090": 128, "RTX-A5000": 64, "RTX-A6000": 84, "GB10": 48, "RTX-2080Ti": 68, "P40": 30, "P100": 56,
        "A40": 84, "L40": 142, "A30": 56, "RTX-6000-Ada": 142, "RTX-A4000": 48, "RTX-A4500": 56, "RTX-4000-Ada": 48,
        "RTX-3060": 28, "RTX-3080": 68, "RTX-3080Ti": 80, "RTX-4060Ti-16GB": 34, "RTX-4070TiS": 66, "RTX-4080": 76,
        "RTX-4080S": 80, "RTX-5080": 84, "RTX-5090": 170, "RTX-PRO-6000": 188, "H100-PCIe": 114, "H100-NVL": 132,
        "H800": 132, "A800-40GB": 108, "A800-80GB": 108, "H20": 78, "H20-141GB": 78, "GH200": 132, "TITAN-RTX": 72,
        "TITAN-V": 80, "RTX-8000": 72, "Quadro-RTX-6000": 72, "RTX-3090Ti": 84, "RTX-5070Ti": 70, "H200-NVL": 132,
        "RTX-4070": 46, "RTX-4070Ti": 60, "RTX-4070S": 56, "RTX-4060": 24, "RTX-4060Ti-8GB": 34, "RTX-3070": 46,
        "RTX-3070Ti": 48, "RTX-2070": 36, "RTX-2070S": 40, "RTX-2080": 46, "RTX-2080S": 48, "RTX-5070": 48,
        "RTX-5060Ti-16GB": 36, "RTX-5060Ti-8GB": 36, "RTX-A2000-12GB": 26, "RTX-2000-Ada": 22, "RTX-5000-Ada": 100,
        "RTX-4090-Laptop": 76, "RTX-3080Ti-Laptop": 58, "GTX-1080Ti": 28, "RTX-4070-Laptop": 36,
        "RTX-4060-Laptop": 24, "RTX-4050-Laptop": 20, "RTX-3070-Laptop": 40}


# Cards sold on SXM / HGX boards whose GPUs are NVLink-connected (NVIDIA data sheets). The others in
# the catalogue are PCIe cards (GeForce and workstation cards: an optional 2-card bridge at most, and
# GeForce drivers disable PCIe peer-to-peer). A "pcie" alias (a100-pcie-40gb, h100-pcie) names the
# PCIe variant of an SXM card: get_gpu returns it with nvlink False.
_NVLINK = {"V100", "V100-32GB", "A100-40GB", "A100-80GB", "H100-80GB", "H200", "B200", "H800", "A800-40GB",
           "A800-80GB", "H20", "H20-141GB", "H100-NVL", "H200-NVL"}  # NVL: PCIe cards bridged in NVLink pairs / quads


def _g(name: str, aliases: tuple[str, ...], memory: float, visible: float, cc: tuple[int, int], price: float,
       gres: str, note: str) -> GpuSpec:
    return GpuSpec(name=name, aliases=aliases, memory_gib=memory, visible_gib=visible, sm_count=_SMS.get(name),
                   compute_capability=cc, price_per_hour=price, gres_type=gres, note=note,
                   nvlink=name in _NVLINK and name not in _UNIFIED, unified_memory=name in _UNIFIED)


_UNIFIED = {"GB10"}  # integrated GPUs the catalogue has: DGX Spark


_CATALOG = (
    _g("T4", ("tesla-t4", "nvidia-t4", "t4-16gb"), 16, 14.57, (7, 5), 0.35, "t4",
       "visible: vLLM logs 14.56/14.57 GiB (Colab); price: GCP on-demand"),
    _g("L4", ("nvidia-l4", "l4-24gb"), 24, 22.06, (8, 9), 0.50, "l4",
       "visible: nvidia-smi 23034 MiB (vllm#4959) minus ~0.42 GiB, matches the 22.06 GiB 24 GB-card log; "
       "price: GCP on-demand"),
    _g("A10G", ("a10g-24gb", "nvidia-a10g"), 24, 22.07, (8, 6), 1.00, "a10g",
       "visible: same 23028 MiB board as A10 (log 22.07 GiB); price: GCP on-demand"),
    _g("A10", ("nvidia-a10", "a10-24gb"), 24, 22.07, (8, 6), 1.00, "a10",
       "visible: vLLM log on OCI 22.07 GiB; price: estimate (as A10G)"),
    _g("V100", ("v100-16gb", "tesla-v100", "v100-sxm2-16gb"), 16, 15.77, (7, 0), 2.48, "v100",
       "visible: estimate from nvidia-smi 16160 MiB; price: estimate (AWS p3 per GPU ~$3.06, GCP $2.48)"),
    _g("V100-32GB", ("v100-32gb", "v100s", "v100s-32gb", "v100-sxm2-32gb"), 32, 31.74, (7, 0), 2.48, "v100",
       "visible: estimate from nvidia-smi 32510 MiB; price: estimate"),
    _g("A100-40GB", ("a100", "a100-40", "a100-sxm4-40gb", "a100-pcie-40gb"), 40, 39.38, (8, 0), 3.00, "a100",
       "visible: vLLM logs 39.38 and 39.50 GiB (smaller taken); price: GCP on-demand"),
    _g("A100-80GB", ("a100-80", "a100-sxm4-80gb", "a100-pcie-80gb", "a100_80gb"), 80, 79.15, (8, 0), 3.70, "a100",
       "visible: estimate (OOM messages commonly print 79.15 GiB; case #27's +0.25 util -> +19.82 GiB "
       "gives ~79.3); price: estimate"),
    _g("H100-80GB", ("h100", "h100-80", "h100-sxm", "h100-sxm5-80gb", "h100-80gb-hbm3"), 80, 79.18,
       (9, 0), 4.50, "h100",
       "visible: measured with torch (CUDA 13) 79.18 GiB, nvidia-smi 81559 MiB; vLLM logs 79.18-79.22; "
       "price: estimate"),
    _g("H200", ("h200-141gb", "h200-sxm"), 141, 139.8, (9, 0), 6.00, "h200",
       "visible: measured with torch (CUDA 13) 139.80 GiB, nvidia-smi 143771 MiB; price: estimate"),
    _g("B200", ("b200-180gb",), 180, 178.35, (10, 0), 8.00, "b200",
       "visible: estimate (nvidia-smi 183359 MiB minus ~0.7 GiB); price: estimate"),
    _g("L40S", ("l40s-48gb",), 48, 44.4, (8, 9), 1.80, "l40s",
       "visible: estimate (nvidia-smi 46068 MiB); price: estimate"),
    _g("RTX-3090", ("3090", "rtx3090", "geforce-rtx-3090"), 24, 23.58, (8, 6), 0.30, "rtx3090",
       "visible: vLLM log 23.58 GiB; price: estimate (community cloud)"),
    _g("RTX-4090", ("4090", "rtx4090", "geforce-rtx-4090"), 24, 23.65, (8, 9), 0.40, "rtx4090",
       "visible: vLLM log 23.65 GiB (24 GB-class card on an AutoDL host); price: estimate (community cloud)"),
    _g("RTX-A5000", ("a5000", "rtxa5000", "rtx-a5000"), 24, 23.57, (8, 6), 0.25, "rtxa5000",
       "visible: estimate (nvidia-smi 24564 MiB minus ~0.42 GiB); price: estimate"),
    _g("RTX-A6000", ("a6000", "rtxa6000", "rtx-a6000"), 48, 47.53, (8, 6), 0.50, "rtxa6000",
       "visible: estimate (nvidia-smi 49140 MiB minus ~0.46 GiB); price: estimate"),
    _g("GB10", ("dgx-spark", "nvidia-gb10"), 128, 119.2, (12, 1), 0.0, "gb10",
       "DGX Spark: 128 GB of memory shared by CPU and GPU; visible: estimate (128e9 B); what the OS "
       "and other programs hold is not available to vLLM; price: n/a (owned)"),
    _g("RTX-2080Ti", ("2080ti", "rtx2080ti", "rtx-2080-ti", "geforce-rtx-2080-ti"), 11, 10.73, (7, 5), 0.15,
       "rtx2080ti", "visible: vLLM log 10.73 GiB; price: estimate (community cloud)"),
    # ---- Cards added from published facts (2026-11-27): compute capability from NVIDIA's CUDA GPU
    # table, SMs from data sheets, nvidia-smi totals from published nvidia-smi output. "visible" is
    # logged where a vLLM log names the card; otherwise estimated from a board with the same
    # nvidia-smi total whose logs we have (46068 MiB: L40/L40S 44.39-44.42; 49140 MiB: A6000 47.54 and an
    # SM89 48 GB card 47.37; 81559 MiB: H100 79.18; 143771 MiB: H200 139.80; 24576 MiB: RTX 3090 23.58;
    # 15360 MiB: T4 14.57), else as nvidia-smi MiB / 1024 minus ~0.42 GiB (HBM cards ~0.47).
    # Give --gpu-visible-gib when a log or torch prints the real figure.
    _g("A40", ("a40-48gb",), 48, 44.39, (8, 6), 0.80, "a40",
       "visible: estimate, same 46068 MiB nvidia-smi total as L40 (vLLM log 44.39 GiB); price: estimate"),
    _g("L40", ("l40-48gb",), 48, 44.39, (8, 9), 1.20, "l40",
       "visible: vLLM log 'total_gpu_memory (44.39GiB)'; nvidia-smi 46068 MiB; price: estimate"),
    _g("L20", ("l20-48gb",), 48, 44.39, (8, 9), 0.90, "l20",
       "visible: estimate, nvidia-smi 46068 MiB as L40; compute capability from its AD102 chip; price: estimate"),
    _g("A30", ("a30-24gb",), 24, 23.58, (8, 0), 0.90, "a30",
       "visible: estimate, nvidia-smi 24576 MiB as RTX 3090 (log 23.58); price: estimate"),
    _g("A16", ("a16-16gb",), 16, 14.57, (8, 6), 0.40, "a16",
       "one of the board's four 16 GB GPUs; visible: estimate, nvidia-smi 15356 MiB as T4; price: estimate"),
    _g("A2", ("a2-16gb",), 16, 14.57, (8, 6), 0.30, "a2",
       "visible: estimate, nvidia-smi 15356 MiB as T4; price: estimate"),
    _g("RTX-6000-Ada", ("rtx-6000-ada-generation", "rtx6000ada", "rtx-6000-ada-48gb"), 48, 47.37, (8, 9), 1.00,
       "rtx6000ada", "visible: estimate, nvidia-smi 49140 MiB (an SM89 48 GB card's log: 47.37 GiB); "
       "price: estimate"),
    _g("RTX-A4000", ("a4000", "rtxa4000"), 16, 15.57, (8, 6), 0.20, "rtxa4000",
       "visible: estimate, nvidia-smi 16376 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-A4500", ("a4500", "rtxa4500"), 20, 19.57, (8, 6), 0.25, "rtxa4500",
       "visible: estimate, nvidia-smi 20470 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4000-Ada", ("rtx-4000-ada-generation", "rtx4000ada"), 20, 19.57, (8, 9), 0.30, "rtx4000ada",
       "visible: estimate, nvidia-smi 20475 MiB minus ~0.42 GiB (with ECC on nvidia-smi shows 19195 MiB: give "
       "--gpu-visible-gib); price: estimate"),
    _g("RTX-3060", ("3060", "rtx3060", "rtx-3060-12gb"), 12, 11.58, (8, 6), 0.10, "rtx3060",
       "the 12 GB card; visible: estimate, nvidia-smi 12288 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-3080", ("3080", "rtx3080", "rtx-3080-10gb"), 10, 9.58, (8, 6), 0.15, "rtx3080",
       "the 10 GB card (a 12 GB 3080 exists: give --gpu-visible-gib); visible: estimate, nvidia-smi 10240 MiB "
       "minus ~0.42 GiB; price: estimate"),
    _g("RTX-3080Ti", ("3080ti", "rtx3080ti", "rtx-3080-ti"), 12, 11.58, (8, 6), 0.18, "rtx3080ti",
       "visible: estimate, nvidia-smi 12288 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4060Ti-16GB", ("rtx-4060-ti-16gb", "4060ti-16gb"), 16, 15.58, (8, 9), 0.15, "rtx4060ti",
       "the 16 GB card; visible: estimate, nvidia-smi 16380 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4070TiS", ("rtx-4070-ti-super", "4070tisuper"), 16, 15.57, (8, 9), 0.20, "rtx4070tis",
       "visible: estimate, nvidia-smi 16376 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4080", ("4080", "rtx4080"), 16, 15.57, (8, 9), 0.25, "rtx4080",
       "visible: estimate, nvidia-smi 16376 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4080S", ("rtx-4080-super", "4080super"), 16, 15.57, (8, 9), 0.27, "rtx4080s",
       "visible: estimate, nvidia-smi 16376 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-5080", ("5080", "rtx5080"), 16, 15.50, (12, 0), 0.35, "rtx5080",
       "visible: estimate, nvidia-smi 16303 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-5070Ti", ("5070ti", "rtx5070ti", "rtx-5070-ti"), 16, 15.50, (12, 0), 0.25, "rtx5070ti",
       "visible: estimate, as the RTX 5080 (16 GB GDDR7, nvidia-smi 16303 MiB) minus ~0.42 GiB; price: estimate"),
    _g("RTX-3090Ti", ("3090ti", "rtx3090ti", "rtx-3090-ti"), 24, 23.57, (8, 6), 0.25, "rtx3090ti",
       "visible: estimate, nvidia-smi 24564 MiB minus ~0.42 GiB (the RTX 3090's memory); price: estimate"),
    _g("H200-NVL", ("h200-nvl-141gb",), 141, 139.8, (9, 0), 5.50, "h200nvl",
       "PCIe cards bridged in NVLink pairs or quads; visible: estimate, the H200's 139.80 GiB (same 141 GB of "
       "HBM3e); price: estimate"),
    _g("RTX-5090", ("5090", "rtx5090", "rtx-5090-d"), 32, 31.42, (12, 0), 0.70, "rtx5090",
       "visible: estimate, nvidia-smi 32607 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-PRO-4500", ("rtx-pro-4500-blackwell", "rtx-pro-4500-blackwell-server-edition"), 32, 31.38, (12, 0),
       0.60, "rtxpro4500", "visible: torch total_memory 33,689,829,376 B (nvidia-smi 32623 MiB), case 18211; "
       "price: estimate"),
    _g("RTX-PRO-6000", ("rtx-pro-6000-blackwell", "rtx-pro-6000-blackwell-server-edition",
                        "rtx-pro-6000-blackwell-workstation-edition",
                        "rtx-pro-6000-blackwell-max-q-workstation-edition"), 96, 94.99, (12, 0), 1.80, "rtxpro6000",
       "visible: estimate, nvidia-smi 97887 MiB minus ~0.6 GiB as the other large GDDR boards; price: estimate"),
    _g("H100-PCIe", ("h100-pcie-80gb", "h100-pcie"), 80, 79.18, (9, 0), 4.00, "h100",
       "80 GB HBM2e, 114 SMs, no NVLink; visible: nvidia-smi 81559 MiB as the SXM card (79.18); price: estimate"),
    _g("H100-NVL", ("h100-nvl-94gb",), 94, 93.11, (9, 0), 4.50, "h100nvl",
       "PCIe cards bridged in NVLink pairs; visible: estimate, nvidia-smi 95830 MiB minus ~0.47 GiB; "
       "price: estimate"),
    _g("H800", ("h800-80gb", "h800-sxm5-80gb", "h800-80gb-hbm3"), 80, 79.18, (9, 0), 4.50, "h800",
       "visible: nvidia-smi 81559 MiB as H100 (79.18); price: estimate"),
    _g("A800-80GB", ("a800", "a800-80", "a800-sxm4-80gb", "a800-pcie-80gb"), 80, 79.15, (8, 0), 3.70, "a800",
       "visible: nvidia-smi 81920 MiB as A100-80GB; price: estimate"),
    _g("A800-40GB", ("a800-40", "a800-sxm4-40gb", "a800-pcie-40gb"), 40, 39.38, (8, 0), 3.00, "a800",
       "visible: nvidia-smi 40960 MiB as A100-40GB; price: estimate"),
    _g("H20", ("h20-96gb",), 96, 95.11, (9, 0), 2.00, "h20",
       "78 SMs; visible: estimate, nvidia-smi 97871 MiB minus ~0.47 GiB; price: estimate"),
    _g("H20-141GB", ("h20-3e", "h20-141g"), 141, 139.80, (9, 0), 2.50, "h20",
       "the HBM3e variant; visible: nvidia-smi 143771 MiB as H200 (139.80); price: estimate"),
    _g("GH200", ("gh200-96gb", "gh200-480gb"), 96, 95.11, (9, 0), 5.00, "gh200",
       "the 96 GB HBM3 superchip (device name 'GH200 480GB' counts the CPU's memory too); visible: estimate, "
       "nvidia-smi 97871 MiB minus ~0.47 GiB; price: estimate"),
    _g("TITAN-RTX", ("titan-rtx", "titanrtx"), 24, 23.58, (7, 5), 0.20, "titanrtx",
       "visible: estimate, nvidia-smi 24576 MiB as RTX 3090; price: estimate"),
    _g("TITAN-V", ("titan-v", "titanv"), 12, 11.36, (7, 0), 0.20, "titanv",
       "visible: estimate, nvidia-smi 12066 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-8000", ("quadro-rtx-8000", "rtx8000"), 48, 47.37, (7, 5), 0.50, "rtx8000",
       "visible: estimate, nvidia-smi 49152 MiB (ECC off; 46080 with ECC on: give --gpu-visible-gib); "
       "price: estimate"),
    _g("Quadro-RTX-6000", ("quadro-rtx-6000",), 24, 23.58, (7, 5), 0.30, "rtx6000",
       "visible: estimate, nvidia-smi 24576 MiB (ECC off); price: estimate"),
    _g("P40", ("tesla-p40", "p40-24gb"), 24, 23.87, (6, 1), 0.20, "p40",
       "visible: estimate from nvidia-smi 24451 MiB; Pascal: not supported by vLLM; price: estimate "
       "(no current public on-demand offer)"),
    _g("P100", ("tesla-p100", "p100-16gb"), 16, 15.89, (6, 0), 1.46, "p100",
       "visible: estimate from nvidia-smi 16280 MiB; price: GCP list (estimate)"),
    # Consumer and workstation cards users' logs name (session 25): memory, compute capability and SMs from NVIDIA's
    # specifications; visible memory estimated as nvidia-smi's total minus ~0.42 GiB, as for the cards above
    _g("RTX-4070", ("rtx-4070", "4070", "rtx4070"), 12, 11.57, (8, 9), 0.15, "rtx4070",
       "visible: estimate, nvidia-smi 12282 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4070Ti", ("rtx-4070-ti", "4070ti", "rtx4070ti"), 12, 11.57, (8, 9), 0.18, "rtx4070ti",
       "visible: estimate, nvidia-smi 12282 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4070S", ("rtx-4070-super", "4070super", "rtx4070s"), 12, 11.57, (8, 9), 0.17, "rtx4070s",
       "visible: estimate, nvidia-smi 12282 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4060", ("rtx-4060", "4060", "rtx4060"), 8, 7.57, (8, 9), 0.10, "rtx4060",
       "visible: estimate, nvidia-smi 8188 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-4060Ti-8GB", ("rtx-4060-ti-8gb", "4060ti-8gb"), 8, 7.57, (8, 9), 0.12, "rtx4060ti",
       "the 8 GB card; visible: estimate, nvidia-smi 8188 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-3070", ("rtx-3070", "3070", "rtx3070"), 8, 7.58, (8, 6), 0.12, "rtx3070",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-3070Ti", ("rtx-3070-ti", "3070ti", "rtx3070ti"), 8, 7.58, (8, 6), 0.13, "rtx3070ti",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-2070", ("rtx-2070", "2070", "rtx2070", "rtx-2070-with-max-q-design"), 8, 7.58, (7, 5), 0.08, "rtx2070",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-2070S", ("rtx-2070-super", "2070super", "rtx2070s"), 8, 7.58, (7, 5), 0.09, "rtx2070s",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-2080", ("rtx-2080", "2080", "rtx2080"), 8, 7.58, (7, 5), 0.10, "rtx2080",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-2080S", ("rtx-2080-super", "2080super", "rtx2080s"), 8, 7.58, (7, 5), 0.11, "rtx2080s",
       "visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB; price: estimate"),
    _g("RTX-5070", ("rtx-5070", "5070", "rtx5070"), 12, 11.50, (12, 0), 0.20, "rtx5070",
       "visible: estimate, as the RTX 5080's GDDR7 reserve (12 GB less 81 MiB) minus ~0.42 GiB; price: estimate"),
    _g("RTX-5060Ti-16GB", ("rtx-5060-ti-16gb", "5060ti-16gb"), 16, 15.50, (12, 0), 0.15, "rtx5060ti",
       "the 16 GB card; visible: estimate, as the RTX 5070 Ti (nvidia-smi 16303 MiB) minus ~0.42 GiB; "
       "price: estimate"),
    _g("RTX-5060Ti-8GB", ("rtx-5060-ti-8gb", "5060ti-8gb"), 8, 7.50, (12, 0), 0.12, "rtx5060ti",
       "the 8 GB card; visible: estimate, 8 GB less the GDDR7 reserve and ~0.42 GiB; price: estimate"),
    _g("RTX-A2000-12GB", ("rtx-a2000-12gb", "a2000-12gb"), 12, 11.57, (8, 6), 0.10, "rtxa2000",
       "the 12 GB card (a 6 GB one exists); visible: estimate, nvidia-smi 12282 MiB (ECC off) minus ~0.42 GiB; "
       "price: estimate"),
    _g("RTX-2000-Ada", ("rtx-2000-ada-generation", "rtx2000ada"), 16, 15.58, (8, 9), 0.15, "rtx2000ada",
       "visible: estimate, nvidia-smi 16380 MiB (ECC off) minus ~0.42 GiB; price: estimate"),
    _g("RTX-5000-Ada", ("rtx-5000-ada-generation", "rtx5000ada"), 32, 31.57, (8, 9), 0.60, "rtx5000ada",
       "visible: estimate, nvidia-smi 32760 MiB (ECC off) minus ~0.42 GiB; price: estimate"),
    _g("RTX-4090-Laptop", ("rtx-4090-laptop-gpu", "rtx-4090-laptop"), 16, 15.57, (8, 9), 0.0, "rtx4090laptop",
       "the laptop chip (AD103, 16 GB), not the desktop card; visible: estimate, nvidia-smi 16376 MiB minus ~0.42 GiB"),
    _g("RTX-3080Ti-Laptop", ("rtx-3080-ti-laptop-gpu", "rtx-3080-ti-laptop"), 16, 15.58, (8, 6), 0.0,
       "rtx3080tilaptop", "the laptop chip (GA103, 16 GB); visible: estimate, nvidia-smi 16384 MiB minus ~0.42 GiB"),
    _g("RTX-4070-Laptop", ("rtx-4070-laptop-gpu", "rtx-4070-laptop"), 8, 7.65, (8, 9), 0.0, "rtx4070laptop",
       "the laptop chip (AD106, 8 GB); visible: vLLM log 7.65 GiB (case 6000); under WSL2 CUDA reports all of "
       "nvidia-smi's 8188 MiB (8.0 GiB: cases 2007, 19201): give --gpu-visible-gib 8"),
    _g("RTX-4060-Laptop", ("rtx-4060-laptop-gpu", "rtx-4060-laptop"), 8, 7.57, (8, 9), 0.0, "rtx4060laptop",
       "the laptop chip (AD107, 8 GB); visible: estimate, nvidia-smi 8188 MiB minus ~0.42 GiB"),
    _g("RTX-4050-Laptop", ("rtx-4050-laptop-gpu", "rtx-4050-laptop"), 6, 5.58, (8, 9), 0.0, "rtx4050laptop",
       "the laptop chip (AD107, 6 GB); visible: estimate, nvidia-smi 6141 MiB minus ~0.42 GiB"),
    _g("RTX-3070-Laptop", ("rtx-3070-laptop-gpu", "rtx-3070-laptop"), 8, 7.58, (8, 6), 0.0, "rtx3070laptop",
       "the laptop chip (GA104, 8 GB); visible: estimate, nvidia-smi 8192 MiB minus ~0.42 GiB"),
    _g("GTX-1080Ti", ("gtx-1080-ti", "1080ti", "gtx1080ti"), 11, 10.58, (6, 1), 0.05, "gtx1080ti",
       "visible: estimate, nvidia-smi 11264 MiB minus ~0.42 GiB; Pascal: not supported by vLLM; price: estimate"),
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


# Words in a device name as CUDA, nvidia-smi or a vLLM log print it that do not tell cards apart.
_VENDOR_WORDS = re.compile(r"(?:^|-)(?:nvidia|tesla|geforce|quadro)(?=-|$)")
# Form-factor words: dropped from the key, but a PCIe card is not NVLink-connected.
_FORM_WORDS = re.compile(r"(?:^|-)(pcie|sxm\d?|hbm3e?|hbm2e?)(?=-|$)")


def _lookup_keys(name: str) -> list[str]:
    """Keys to try for a card name: as given, without the vendor words, and as CUDA prints it
    ("Tesla V100-SXM2-32GB", "NVIDIA A100 80GB PCIe") reduced to model and memory ("v100-32gb")."""
    key = _norm(name)
    bare = _VENDOR_WORDS.sub("", key).strip("-")
    plain = _FORM_WORDS.sub("", bare).strip("-")
    plain = re.sub(r"-+", "-", plain)
    return list(dict.fromkeys(k for k in (key, bare, plain) if k))


# A MIG instance as nvidia-smi and CUDA name it ("NVIDIA A100 80GB PCIe MIG 3g.40gb") or as a profile may write it
# ("a100-80gb-mig-3g.40gb"): the parent card, compute slices (of 7) and memory in GB; "+me" profiles too.
_MIG = re.compile(r"^(?P<parent>.+?)[\s_-]+mig[\s_-]+(?P<g>[1-7])g\.(?P<gb>\d{1,3})gb(?:\+me)?$", re.I)
# Cards that can be split into MIG instances (NVIDIA MIG user guide: A100, A30, H100, H200, H20, B200, GH200 and
# the RTX PRO 6000 Blackwell; A800 / H800 are A100 / H100 variants)
_MIG_CARDS = {"A100-40GB", "A100-80GB", "A30", "H100-80GB", "H100-PCIe", "H100-NVL", "H200", "H800", "A800-40GB",
              "A800-80GB", "H20", "H20-141GB", "GH200", "B200", "RTX-PRO-6000", "H200-NVL"}
# A partial instance's memory is a whole number of eighths of the card's, less ~0.45 %: `nvidia-smi mig -lgip` on an
# 80 GB card lists 19.62 GiB for 2/8 and 39.38 GiB for 4/8 of its 79.12 GiB; 7g.80gb is the whole card
_MIG_PARTIAL = 0.9955


def mig_slice(parent: GpuSpec, slices: int, gb: int) -> GpuSpec:
    """A MIG instance of ``parent`` with ``slices`` compute slices (of 7) and ``gb`` GB of memory: its visible memory
    estimated from the parent's (whole eighths of it), the parent's compute capability, no NVLink (an instance
    talks to no other GPU). A process sees one MIG instance, so a server on it runs without tensor parallelism."""
    if parent.name not in _MIG_CARDS:
        raise UnknownGpuError(f"{parent.name} has no MIG instances (MIG cards: {', '.join(sorted(_MIG_CARDS))})")
    eighths = round(gb / parent.memory_gib * 8)
    if not 1 <= eighths <= 8 or slices > 7:
        raise UnknownGpuError(f"no MIG profile {slices}g.{gb}gb on a {parent.name} ({parent.memory_gib:g} GB); "
                              "`nvidia-smi mig -lgip` lists the card's profiles")
    visible = parent.visible_gib if eighths == 8 else round(parent.visible_gib * eighths / 8 * _MIG_PARTIAL, 2)
    profile = f"{slices}g.{gb}gb"
    return parent.model_copy(update={
        "name": f"{parent.name} MIG {profile}", "aliases": (), "memory_gib": float(gb), "visible_gib": visible,
        "price_per_hour": round(parent.price_per_hour * slices / 7, 3), "nvlink": False, "mig": profile,
        "sm_count": max(1, parent.sm_count * slices // 7) if parent.sm_count else None,
        "gres_type": f"{parent.gres_type}_{profile}",
        "note": f"MIG {profile} of a {parent.name}: visible estimated as {eighths}/8 of {parent.visible_gib} GiB "
                "(give the log's total when you have it); SLURM sites name MIG GRES types their own way: set the "
                "job's gres_type to the site's"})


def get_gpu(name: str) -> GpuSpec:
    """Catalogue lookup, case-insensitive, by canonical name or alias (``h100``, ``a100``, ``t4``),
    or by the device name CUDA reports (``NVIDIA A100 80GB PCIe``, ``Tesla V100-SXM2-32GB``); a MIG instance
    as nvidia-smi names it (``NVIDIA A100 80GB PCIe MIG 3g.40gb``) is that share of its card (:func:`mig_slice`)."""
    mig = _MIG.match(name.strip())
    if mig:
        return mig_slice(get_gpu(mig["parent"]), int(mig["g"]), int(mig["gb"]))
    keys = _lookup_keys(name)
    for k in keys:
        if k in _INDEX:
            g = _INDEX[k]
            pcie = "pcie" in keys[0] or k.startswith("v100s")  # V100S is a PCIe-only card
            return g.model_copy(update={"nvlink": False}) if g.nvlink and pcie else g
    known = ", ".join(GPUS)
    close = _closest(keys)
    did = f" Name its memory size: {' or '.join(close)}." if close else ""
    raise UnknownGpuError(
        f"unknown GPU {name[:80]!r}.{did} Known: {known}. For another card give its memory and compute "
        f"capability (gpu: {{memory_gib: 48, compute_capability: '8.6'}})"
    )


def _closest(keys: list[str]) -> list[str]:
    """Catalogue cards a name lacks only the memory size of ('rtx-4060-ti' -> RTX-4060Ti-16GB: the card comes in
    8 and 16 GB), never a guess at another card."""
    out: list[str] = []
    for k in keys:
        for alias, g in _INDEX.items():
            if alias.startswith(k + "-") and re.fullmatch(r"\d+gb", alias[len(k) + 1:]) and g.name not in out:
                out.append(g.name)
    return out


def custom_gpu(memory_gib: float | None, compute_capability: str | tuple[int, int] | float,
               name: str = "custom", *, visible_gib: float | None = None, price_per_hour: float = 0.0,
               gres_type: str | None = None) -> GpuSpec:
    """A GPU the catalogue lacks.

    ``visible_gib`` is what CUDA reports (``torch.cuda.mem_get_info()[1]``, the figure vLLM
    multiplies by the utilisation); give it when you have it. Otherwise the visible memory is
    estimated from the marketing size as memory x 0.93 (see module doc), which is right for
    ECC GDDR cards (T4, L4, A10) and ~6 % low for HBM cards (A100, H100)."""
    cc = parse_compute_capability(compute_capability)
    if visible_gib is None and memory_gib is None:
        raise ValueError("a custom GPU needs its memory: visible_gib (as CUDA reports it) or memory_gib")
    if visible_gib is not None:
        visible, note = float(visible_gib), f"custom: {visible_gib} GiB visible as given"
    else:
        assert memory_gib is not None
        visible = round(memory_gib * CUSTOM_VISIBLE_FRACTION, 2)
        note = f"custom: visible estimated as {CUSTOM_VISIBLE_FRACTION} x {memory_gib} GiB"
    return GpuSpec(
        name=name, memory_gib=memory_gib if memory_gib is not None else visible, visible_gib=visible,
        compute_capability=cc, price_per_hour=price_per_hour,
        gres_type=gres_type or re.sub(r"[^a-z0-9]+", "", name.lower()) or "gpu", note=note,
    )
