"""Run real vLLM start-up cases through ``biofleet fit-check`` the way a user would.

Each case (tests/data/*.jsonl) is turned into a command line by ONE mechanical rule set,
the same for every case (no per-case settings):

- ``--model``: the case's model id without the parenthetical note, or the ``.gguf`` file vLLM was
  given (named in the note or in the quoted command / ``LLM(model=...)``). If the catalogue does not
  know it, ``tests/data/model_configs/<org>--<name>.json`` is written into a temporary
  directory as its config.json; a model with neither is not run.
- the GPU: the catalogue card its name matches (``--gpu``); ``--gpu-visible-gib`` when the
  log printed the total; a MIG slice its own size with the parent's compute capability; a named
  card the catalogue lacks ``--gpu-visible-gib`` as logged; an unnamed "N GB-class" card becomes ``--gpu-visible-gib`` (logged,
  else the size) with ``--compute-capability 8.6`` (assumed; it only matters for dtype).
  No GPU at all: an H100 stands in and only the weights are scored.
- ``--vllm-version``: the first version number in the case's version (or engine) field; a
  V0 log without one runs as 0.6; none at all runs as the default.
- ``--max-model-len``, ``--gpu-memory-utilization``, ``--tensor-parallel-size``,
  ``--kv-cache-dtype``, ``--enforce-eager``: the case's fields (values vLLM printed or used).
- ``--dtype``: the case's dtype when it names one and does not say "auto".
- ``--quantization``, ``--max-num-batched-tokens``, ``--max-num-seqs``: only when the quoted
  command line / non-default args show the user set them (vLLM's own defaults are predicted).
- ``--kind embed`` for models whose id says "embedding"; ``--gpu-free-gib`` when the error
  line states the free memory at start-up (those cases test the start-up rule itself), or the
  logged total minus ``gpu_held_by_others_gib`` where the source states what other processes held, or
  minus the other processes torch's out-of-memory message lists beside "this process".
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calculators import Facts
from typer.testing import CliRunner

from biofleet.catalog.gpus import UnknownGpuError, get_gpu
from biofleet.catalog.models import ModelSpec, UnknownModelError, get_model
from biofleet.cli.main import app
from biofleet.fitcheck import language_model_only_override, rope_override

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = DATA / "model_configs"
V0_UNKNOWN_VERSION = "0.6"
ASSUMED_CC = "8.6"

# (pattern in the case's gpu text, catalogue name); first match wins.
_GPU_NAMES: tuple[tuple[str, str], ...] = (
    (r"GB10|DGX Spark", "GB10"), (r"GH200", "GH200"), (r"H200", "H200"), (r"H100[ -]PCIe", "H100-PCIe"),
    (r"H100 NVL", "H100-NVL"), (r"H100", "H100-80GB"), (r"H800", "H800"), (r"\bH20-3e|H20 141", "H20-141GB"),
    (r"\bH20\b", "H20"), (r"A800[^,;]*?40\s?GB", "A800-40GB"), (r"A800", "A800-80GB"),
    (r"RTX PRO 6000", "RTX-PRO-6000"), (r"RTX 6000 Ada", "RTX-6000-Ada"), (r"\bL40\b", "L40"), (r"\bA40\b", "A40"),
    (r"\bL20\b", "L20"), (r"\bA30\b", "A30"), (r"RTX 5090", "RTX-5090"), (r"RTX 5080", "RTX-5080"),
    (r"RTX 4080", "RTX-4080"), (r"RTX 3080 Ti", "RTX-3080Ti"), (r"RTX 3080", "RTX-3080"), (r"RTX 3060", "RTX-3060"),
    (r"TITAN RTX", "TITAN-RTX"), (r"Quadro RTX 8000", "RTX-8000"),
    (r"B200", "B200"), (r"A100-PCIE-40GB|A100 40GB PCIe", "a100-pcie-40gb"),
    (r"A100-PCIE-80GB|A100 80GB PCIe", "a100-pcie-80gb"),
    (r"V100S", "v100s"),
    (r"A100[^,;]*?40\s?GB|A100 \(.*40 GB", "A100-40GB"), (r"A100", "A100-80GB"), (r"L40S", "L40S"),
    (r"\bL4\b", "L4"), (r"\bT4\b", "T4"), (r"A10G", "A10G"), (r"\bA10\b", "A10"), (r"RTX 3090|RTX_3090", "RTX-3090"),
    (r"RTX 4090", "RTX-4090"), (r"A5000", "RTX-A5000"), (r"A6000", "RTX-A6000"), (r"2080 Ti", "RTX-2080Ti"),
    (r"V100S|V100[^,;]*?32\s?GB", "V100-32GB"), (r"V100", "V100"), (r"P40", "P40"), (r"P100", "P100"),
)
_UNIFIED_MEMORY = {"GB10"}  # CPU and GPU share the memory: no fixed CUDA total, KV not scored


def _named_gpu(gpu_text: str) -> str | None:
    """The catalogue card a case's GPU text names: its device name (the text before any parenthesis,
    where gatherers put their comments) by pattern, then by the catalogue's own lookup, then the
    patterns over the whole text."""
    head = gpu_text.split("(", 1)[0]
    name = next((n for pat, n in _GPU_NAMES if re.search(pat, head, re.I)), None)
    if name:
        return name
    named = _catalogue_gpu(gpu_text)
    if named or re.search(r"NVIDIA|GeForce|Tesla|Quadro|\bRTX\b", head, re.I):
        return named  # a device name the catalogue lacks: the comments after it must not pick another card
    return next((n for pat, n in _GPU_NAMES if re.search(pat, gpu_text, re.I)), None)


def _sized_as_stated(name: str, case: dict[str, Any]) -> str:
    """The catalogue card of the size the case states (``gpu_memory`` "40 GB (machine type)") when the device
    name alone picked the family's other size (an "A100" is the 80 GB card unless the case says 40)."""
    stated = re.match(r"\s*(\d+)\s*GB\b", str(case.get("gpu_memory") or ""))
    if not stated or int(stated.group(1)) == round(get_gpu(name).memory_gib):
        return name
    try:
        return get_gpu(f"{name.split('-')[0]}-{stated.group(1)}GB").name
    except UnknownGpuError:
        return name


def _catalogue_gpu(gpu_text: str) -> str | None:
    """The catalogue card the case's GPU text names by the device name CUDA prints (the text before any
    count, parenthesis or comma), if any."""
    head = re.split(r"\s+x\s*\d|\s*\(|,|;", gpu_text, maxsplit=1)[0].strip()
    try:
        return get_gpu(head).name if head else None
    except UnknownGpuError:
        return None


def _model_default_only(case: dict[str, Any], key: str) -> bool:
    """The case's value is the model's default as the gatherer read it from the config, not logged
    or confirmed by an error line: the fit-check derives it as vLLM does (rope scaling included)."""
    said = [str(d) for d in case.get("defaults_assumed") or [] if str(d).startswith(key)]
    return bool(said) and not any("confirmed" in d for d in said)


def _flag_in_quote(quote: str, key: str) -> str | None:
    """A value the user set, from a non-default-args dict, the args Namespace the server logs, a command line, the
    keyword arguments of an ``LLM(...)`` call, a ``vllm serve --config`` YAML file (``max-num-seqs: 1``) or the
    user's own words
    ("decreasing `max_num_seqs` to 32") in the quote; never from vLLM's own resolved-settings lines."""
    k = re.escape(key)
    # (quantization also from the engine's "with config: ... quantization=X" line: what vLLM loads)
    m = re.search(rf"'{k}':\s*'?([^',}}\s]+)", quote) or \
        re.search(rf"--{k.replace('_', '[-_]')}[= ]+([^\s\\`]+)", quote) or \
        re.search(rf"-\s+--{k.replace('_', '[-_]')}\s*\n[>+]?\s*-\s+[\"']?([^\s\"']+)", quote) or \
        re.search(rf"\b{k}`?\s+to\s+(\d+)\b", quote) or \
        re.search(rf"args: Namespace\([^\n]*?\b{k}=(?!None\b)([^,)\s]+)", quote) or \
        re.search(rf"\bLLM\([^)]*?\b{k}\s*=\s*(?!None\b)([^,)\s#]+)", quote) or \
        re.search(rf"(?m)^\s*{k.replace('_', '[-_]')}:\s*['\"]?([\w.-]+)", quote) or \
        (re.search(r"\bquantization=(?!None\b)([A-Za-z][A-Za-z0-9_-]+)", quote) if k == "quantization" else None) or \
        (re.search(r"(?:^|\s)-q[= ]+([A-Za-z0-9_-]+)", quote) if k == "quantization" else None) or \
        (re.search(_UNSLOTH_BANNER[key], quote) if key in _UNSLOTH_BANNER else None)
    return m.group(1).strip("'\"") if m else None


# Unsloth starts vLLM itself and prints what it passes ("Chunked prefill tokens = 2048. Num Sequences = 128.")
_UNSLOTH_BANNER = {"max_num_batched_tokens": r"Unsloth: .*Chunked prefill tokens = (\d+)",
                   "max_num_seqs": r"Unsloth: .*Num Sequences = (\d+)"}


def _others_in_oom(error: str) -> float:
    """GiB other processes held, from torch's out-of-memory message when it tells them from the failing one
    ("GPU 0 has a total capacity of 23.54 GiB of which 139.75 MiB is free. Process 4257 has 83.54 MiB memory in
    use. ... this process has 21.72 GiB memory in use"): the total less the free memory and this process's, which
    counts what torch could not list as well (a desktop card's display or another container: 0.6-1.5 GiB on the
    consumer cards of cases 1059, 15206, 17223; 0.00-0.03 GiB on data-centre cards), else the processes it lists.
    Without "this process" (in a container torch cannot match its own pid) every listed process may be the
    failing one."""
    this = re.search(r"this process has ([\d.]+) (GiB|MiB)", error)
    if not this:
        return 0.0
    units = {"GiB": 1.0, "MiB": 1 / 1024}
    held = {pid: float(n) * units[u]  # by pid: a message quoted twice lists each process twice
            for pid, n, u in re.findall(r"Process (\d+) has ([\d.]+) (GiB|MiB) memory in use", error)}
    listed = sum(held.values())
    cap = re.search(r"total capaci?ty of ([\d.]+) GiB of which ([\d.]+) (GiB|MiB) is free", error)
    if cap:
        rest = float(cap[1]) - float(cap[2]) * units[cap[3]] - float(this[1]) * units[this[2]]
        return max(listed, round(rest, 2))
    return listed


def _version(case: dict[str, Any]) -> str | None:
    for key in ("vllm_version", "engine"):
        # "0.11.0", "0.8.5.post1"; not a range a gatherer wrote for an unknown release ("~0.2x"), nor the
        # "0.1.devN+g<hash>" an untagged source checkout reports (the release it was cut from follows, if known)
        text = re.sub(r"\b0\.1\.dev\d+\+g[0-9a-f]+", "", str(case.get(key) or ""))
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)(?![\dxX])", text)
        if m:
            return m.group(1)
    if str(case.get("engine") or "").startswith("V0"):
        return V0_UNKNOWN_VERSION
    return None


def _model_name(case: dict[str, Any]) -> str | None:
    raw = case.get("model")
    if not raw:
        return None
    # vLLM is given the file, not the repository: named in the case, or in the quoted command / LLM(...) call
    gguf = re.search(r"\(file ([^()\s]+\.gguf)\)", str(raw)) or \
        re.search(r"""(?:--model[= ]|\bmodel\s*=\s*|vllm serve\s+)["']?([^\s"',)]+\.gguf)\b""", str(case.get("quote") or ""))
    return gguf.group(1) if gguf else re.split(r"\(|\s+\+", str(raw))[0].strip()


@dataclass
class Run:
    case: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    skip: str = ""  # why the case could not be run
    gpu_known: bool = True
    unified: bool = False
    result: dict[str, Any] | None = None
    exit_code: int | None = None
    spec: ModelSpec | None = None  # the model the command line resolved to


def _shared_models(case: dict[str, Any]) -> list[str]:
    """Models of a case that ran several servers on the same GPUs ("A + B (two servers ...)")."""
    raw = re.sub(r"\([^)]*\)", "", str(case.get("model") or ""))  # "+" inside a note is not a second server
    if " + " not in raw:
        return []
    return [re.split(r"\(", part)[0].strip() for part in raw.split(" + ")]


def _profile_for(case: dict[str, Any], models: list[str], gpu: str, workdir: Path) -> Path:
    """A profile that puts every server of the case on the same GPUs: the form users run for
    co-located servers (``biofleet fit-check --profile FILE``)."""
    tp = int(case.get("tensor_parallel_size") or 1)
    servers = {f"s{i}": {"model": m, **({"max_model_len": case["max_model_len"]} if case.get("max_model_len") else {}),
                         **({"gpu_memory_utilization": case["gpu_memory_utilization"]}
                            if case.get("gpu_memory_utilization") else {}),
                         "tensor_parallel_size": tp} for i, m in enumerate(models)}
    slots = [list(servers)] + [[] for _ in range(tp - 1)]
    version = _version(case)
    doc = {"name": f"case{case['id']}", "servers": servers, **({"vllm_version": version} if version else {}),
           "jobs": [{"name": "shared", "gpu": gpu, "gpus_per_node": tp, "nodes": [{"gpus": slots}]}]}
    path = workdir / f"case{case['id']}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def build(case: dict[str, Any], workdir: Path) -> Run:
    run = Run(case)
    model = _model_name(case)
    if not model:
        run.skip = "model not stated"
        return run
    shared = _shared_models(case)
    if shared:
        gpu_text = str(case.get("gpu") or "")
        name = _named_gpu(gpu_text)
        if name is None:
            run.skip = "co-located servers on an unnamed GPU"
            return run
        run.argv = ["fit-check", "--profile", str(_profile_for(case, shared, name, workdir)), "--json"]
        return run
    try:
        run.spec = get_model(model)
        ref = model
        method = str(case.get("quantization") or "").split(" ")[0].lower()
        if method in ("gptq", "awq") and run.spec.quantization is None:
            # a user's own GPTQ / AWQ copy of a catalogue model (named by the model it quantises): its copy
            ref = f"{model}-{method.upper()}"
            run.spec = get_model(ref)
    except UnknownModelError:
        cfg = CONFIGS / (model.replace("/", "--") + ".json")
        if not cfg.is_file():
            run.skip = f"model {model} not in the catalogue and no config in tests/data/model_configs"
            return run
        d = workdir / model.replace("/", "--")
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(cfg.read_text())
        ref = str(d)
        run.spec = get_model(ref)
    argv = ["fit-check", "--model", ref, "--json"]
    gpu_text = str(case.get("gpu") or "")
    logged = case.get("gpu_total_gib_logged")
    name = _named_gpu(gpu_text)
    name = _sized_as_stated(name, case) if name else None
    mig = re.search(r"MIG\b[^,;]*?\d+g\.(\d+)gb", gpu_text, re.I)
    if name and mig and not logged:  # a MIG slice: its own memory, the parent card's compute capability
        argv += ["--gpu-memory-gib", mig.group(1), "--compute-capability", get_gpu(name).cc_str]
    elif name:
        argv += ["--gpu", name]
        if logged:
            argv += ["--gpu-visible-gib", str(logged)]
        run.unified = name in _UNIFIED_MEMORY
    elif logged and not re.search(r"unnamed|GB[- ]class", gpu_text):  # a named card the catalogue lacks
        argv += ["--gpu-visible-gib", str(logged), "--compute-capability", ASSUMED_CC]
    # "unnamed 24 GB-class GPU" (earlier sets), "unnamed (80 GB class; visible total 79.2 GiB ...)" (set 21)
    elif sized := re.search(r"(\d+)\s*GB[- ]class|unnamed[^(]*?(\d+)\s*GB", gpu_text):
        size = logged or float(sized.group(1) or sized.group(2))
        argv += ["--gpu-visible-gib" if logged else "--gpu-memory-gib", str(size), "--compute-capability", ASSUMED_CC]
    elif head_size := re.search(r"(\d+)\s*GB\b", gpu_text.split("(", 1)[0]):  # a named card by its size
        argv += ["--gpu-memory-gib", head_size.group(1), "--compute-capability", ASSUMED_CC]
    else:
        run.gpu_known = False
        argv += ["--gpu", "H100-80GB"]  # stand-in: weights only
    version = _version(case)
    if version:
        argv += ["--vllm-version", version]
    quote = str(case.get("quote") or "")
    for key, flag in (("max_model_len", "--max-model-len"), ("gpu_memory_utilization", "--gpu-memory-utilization")):
        if case.get(key) and not (key == "max_model_len" and _model_default_only(case, key)):
            argv += [flag, str(case[key])]
    if (case.get("tensor_parallel_size") or 1) > 1:
        argv += ["--tensor-parallel-size", str(case["tensor_parallel_size"])]
    if str(case.get("kv_cache_dtype") or "").startswith("fp8"):
        argv += ["--kv-cache-dtype", str(case["kv_cache_dtype"])]
    if case.get("enforce_eager") is True:
        argv += ["--enforce-eager"]
    dtype = str(case.get("dtype") or "").split(" ")[0].strip(",;")
    if dtype in ("float16", "half", "bfloat16", "float32") and "auto" not in str(case.get("dtype")):
        argv += ["--dtype", dtype]
    for key in ("quantization", "max_num_batched_tokens", "max_num_seqs", "mamba_ssm_cache_dtype",
                "pipeline_parallel_size"):
        v = _flag_in_quote(quote, key)
        if v:
            argv += ["--" + key.replace("_", "-"), v]
    # pipeline stages from the engine's config line when the command is not quoted (the default is 1, so any other
    # value there is the user's; unlike max_num_seqs, whose resolved default that line prints too)
    stages = re.search(r"engine \(v[^)]*\) with config:.*?\bpipeline_parallel_size=(\d+)", quote)
    if stages and int(stages.group(1)) > 1 and "--pipeline-parallel-size" not in argv:
        argv += ["--pipeline-parallel-size", stages.group(1)]
    use_v1 = re.search(r"\bVLLM_USE_V1=([01])\b", quote)  # 0.8-0.10 run V0 on 0, 0.7 runs V1 on 1
    if use_v1:
        argv += ["--env", f"VLLM_USE_V1={use_v1.group(1)}"]
    # a context stretched by rope scaling: the case's transcription of what the source states, or the JSON of
    # vLLM's --rope-scaling / --hf-overrides on a quoted command line
    rope = case.get("rope_scaling")
    quoted = re.search(r"--(rope-scaling|hf-overrides)[= ]+'(\{[^']*\})'", quote)
    if rope:
        argv += ["--rope-scaling", json.dumps(rope)]
    elif quoted and quoted.group(1) == "rope-scaling":
        argv += ["--rope-scaling", quoted.group(2)]
    elif quoted and (hf := rope_override(["--hf-overrides", quoted.group(2)])):  # the tool's own reader
        argv += ["--rope-scaling", json.dumps(hf)]
    # a multimodal model served text-only: --language-model-only, or every --limit-mm-per-prompt at 0 (command line,
    # a `--config` YAML file's `limit-mm-per-prompt: '{"image": 0}'`, or the dotted per-modality flags)
    limits = re.search(r"limit[-_]mm[-_]per[-_]prompt['\"]?\s*[:= ]\s*'?(\{[^}]*\})", quote)
    dotted = re.findall(r"(--limit(?:-mm-per-prompt|_mm_per_prompt)\.\w+)[= ]+(\S+)", quote)
    if "--language-model-only" in quote:
        argv += ["--language-model-only"]
    elif limits:
        argv += ["--limit-mm-per-prompt", limits.group(1)]
    elif language_model_only_override([part for pair in dotted for part in pair]):  # the tool's own reader
        argv += ["--language-model-only"]
    # LoRA: --enable-lora as an args dict ('enable_lora': True), a command line or an LLM(...) call shows it, with the
    # adapter count and rank the quote states (vLLM's defaults, 1 and 16, otherwise)
    if re.search(r"'enable_lora':\s*True|--enable[-_]lora(?![= ]+(?:False|false|0)\b)\b|\benable_lora\s*=\s*True", quote):
        argv += ["--enable-lora"]
        for key in ("max_loras", "max_lora_rank"):
            v = _flag_in_quote(quote, key)
            if v and v.isdigit():
                argv += ["--" + key.replace("_", "-"), v]
    offload = case.get("cpu_offload_gb") or _flag_in_quote(quote, "cpu_offload_gb")
    if offload and float(offload) > 0:
        argv += ["--cpu-offload-gb", str(offload)]
    if "embedding" in model.lower():
        argv += ["--kind", "embed"]
    # "Free memory on device cuda:0 (38.74/121.63 GiB) on startup ..." (or as a user shortens it, "Free memory on
    # cuda:0 (...)")
    free = re.search(r"Free memory\W+on (?:device\b)?[^(]*\((\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) GiB\)",
                     str(case.get("error") or ""))
    if free:
        argv += ["--gpu-free-gib", free.group(1)]
    elif case.get("gpu_held_by_others_gib") and (logged or name):  # what the source says others held
        total = float(logged) if logged else get_gpu(str(name)).visible_gib
        argv += ["--gpu-free-gib", f"{total - float(case['gpu_held_by_others_gib']):.2f}"]
    elif (others := _others_in_oom(f"{case.get('error') or ''}\n{quote}")) and logged:
        argv += ["--gpu-free-gib", f"{float(logged) - others:.2f}"]
    run.argv = argv
    return run


def execute(run: Run) -> Run:
    if run.skip:
        return run
    res = CliRunner().invoke(app, run.argv)
    run.exit_code = res.exit_code
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        # the command refused its inputs (the console script prints this and exits 2)
        run.skip = f"fit-check refused the command line: {str(res.exception).strip()[:200]}"
    elif res.exit_code in (0, 1):
        run.result = json.loads(res.stdout)
    else:
        run.skip = f"fit-check exited {res.exit_code}: {res.output.strip()[:200]}"
    return run


def _arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def facts(run: Run) -> Facts | None:
    """The facts of a run as the public calculators take them (for tests/calculators.py)."""
    if run.result is None or not run.result["servers"] or "--model" not in run.argv:
        return None
    s = run.result["servers"][0]
    inputs = s["inputs"]
    model = run.spec
    if model is None:
        return None
    name = _arg(run.argv, "--gpu")
    size = re.search(r"(\d+)\s*GB", str(run.case.get("gpu_memory") or ""))
    gpu = get_gpu(name) if name else None
    marketing = gpu.memory_gib if gpu else float(size.group(1)) if size else float(inputs["gpu_visible_gib"])
    card = (gpu or get_gpu("H100-80GB")).model_copy(update={"name": inputs["gpu"], "memory_gib": marketing})
    bits = model.quant_bits if model.quantization else 8.0 if inputs["quantization"] == "fp8" else None
    weight_bytes = 2.0 if bits is None else (1.0 if bits >= 8 else 0.5)
    return Facts(model=model, gpu=card, max_model_len=int(inputs["max_model_len"]),
                 utilization=float(inputs["gpu_memory_utilization"]), tp=int(inputs["tensor_parallel_size"]),
                 weight_bytes=weight_bytes, kv_bytes=1 if str(inputs["kv_cache_dtype"]).startswith("fp8") else 2,
                 quantized=bits is not None)


def _rel(pred: float, logged: float) -> float:
    return (pred - logged) / abs(logged)


# what the fit-check checks: memory, and the layout / dtype / length rules it refuses plans for
# ("KV cache" alone is not one: "hangs after the KV cache was sized" is a failure after the memory was sized)
_MEMORY_WORDS = re.compile(r"memory|OOM|cache blocks|max seq len|GiB|utili[sz]ation|divisible|"
                           r"compute capability|max_model_len|dtype|Mamba", re.I)


def _memory_outcome(case: dict[str, Any]) -> bool:
    """The outcome is one the fit-check can predict: a start, or a failure about memory or a rule it
    checks (a ``failed_other`` on a compilation option after the memory was sized is not)."""
    return case["outcome"] != "failed_other" or bool(_MEMORY_WORDS.search(str(case.get("error") or "")))


def score(run: Run) -> dict[str, Any]:
    """Verdict, weights and KV errors of one run (keys absent where the case has no figure)."""
    c = run.case
    out: dict[str, Any] = {"id": c["id"], "model": (_model_name(c) or "-").split("/")[-1][:32],
                           "gpu": str(c.get("gpu") or "-")[:24], "version": _version(c) or "default",
                           "logged": "started" if str(c["outcome"]).startswith("started") else "failed",
                           "skip": run.skip, "argv": " ".join(run.argv[1:])}
    if run.skip or run.result is None:
        return out
    s = run.result["servers"][0]
    codes = sorted({f["code"] for f in [*run.result["findings"], *run.result["gpus"][0]["findings"], *s["findings"]]
                    if f["severity"] == "error"})
    out["predicted"] = "started" if run.result["ok"] else "failed"
    out["codes"] = codes
    out["verdict_scored"] = run.gpu_known and _memory_outcome(c)
    if c.get("weights_loaded_gib"):
        out["w_log"], out["w_pred"] = c["weights_loaded_gib"], s["weights_gib"]
        out["w_err"] = _rel(s["weights_gib"], c["weights_loaded_gib"])
    if run.gpu_known and not run.unified and out["logged"] == "started":
        if c.get("kv_cache_tokens"):
            out["t_log"], out["t_pred"] = c["kv_cache_tokens"], s["kv_cache_tokens"]
            out["kv_err"] = _rel(s["kv_cache_tokens"], c["kv_cache_tokens"])
        elif c.get("kv_cache_gib"):
            out["g_log"], out["g_pred"] = c["kv_cache_gib"], s["kv_cache_gib"]
            out["kv_err"] = _rel(s["kv_cache_gib"], c["kv_cache_gib"])
        elif c.get("gpu_blocks"):
            out["t_log"], out["t_pred"] = c["gpu_blocks"] * 16, s["kv_cache_tokens"]
            out["kv_err"] = _rel(s["kv_cache_tokens"], c["gpu_blocks"] * 16)
    return out


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def run_file(name: str) -> list[Run]:
    with tempfile.TemporaryDirectory() as tmp:
        return [execute(build(c, Path(tmp))) for c in load(name)]


@dataclass(frozen=True)
class Summary:
    verdicts: int
    verdicts_right: int
    weights_n: int
    weights_median: float
    kv_n: int
    kv_median: float

    @property
    def verdict_rate(self) -> float:
        return self.verdicts_right / self.verdicts if self.verdicts else 0.0


def summarize(rows: list[dict[str, Any]]) -> Summary:
    v = [r for r in rows if r.get("verdict_scored")]
    w = [abs(r["w_err"]) for r in rows if "w_err" in r]
    k = [abs(r["kv_err"]) for r in rows if "kv_err" in r]
    return Summary(len(v), sum(r["logged"] == r["predicted"] for r in v), len(w),
                   statistics.median(w) if w else 0.0, len(k), statistics.median(k) if k else 0.0)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | model | GPU | vLLM | logged | predicted | weights log/pred GiB | err | KV log/pred | err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["skip"]:
            lines.append(f"| {r['id']} | {r['model']} | {r['gpu']} | {r['version']} | {r['logged']} | "
                         f"not run: {r['skip']} | | | | |")
            continue
        pred = r["predicted"] + (f" ({', '.join(r['codes'])})" if r["codes"] else "")
        if not r.get("verdict_scored"):
            pred = "(GPU not stated) " + pred
        w = f"{r['w_log']:.2f} / {r['w_pred']:.2f}" if "w_log" in r else ""
        if "t_log" in r:
            kv = f"{r['t_log']:,} / {r['t_pred']:,} tok"
        elif "g_log" in r:
            kv = f"{r['g_log']:.2f} / {r['g_pred']:.2f} GiB"
        else:
            kv = ""
        lines.append(f"| {r['id']} | {r['model']} | {r['gpu']} | {r['version']} | {r['logged']} | {pred} | {w} | "
                     f"{_pct(r.get('w_err'))} | {kv} | {_pct(r.get('kv_err'))} |")
    return "\n".join(lines)


__all__ = [
    "Run",
    "Summary",
    "UnknownGpuError",
    "build",
    "execute",
    "get_gpu",
    "load",
    "run_file",
    "score",
    "summarize",
    "table",
]
