"""Calibrate the fit-check against real vLLM start-ups, through the command line users run.

Four case files (tests/data): the 22 public calibration cases, the 49 tuning cases gathered
for fit-check v2 and the held-out cases (kept out of tuning; scored once the model was
frozen, see docs/fit-check.md). ``tests/calibration.py`` turns every case into a
``biofleet fit-check --model ... --json`` command line with one rule set for all cases.
The accuracy targets are asserted; ``pytest -s`` prints the per-case tables and the
comparison with the public calculators (tests/calculators.py) that docs/fit-check.md shows.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from calculators import CALCULATORS, Answer
from calibration import DATA, Run, facts, run_file, score, summarize, table

OLD, TUNING, HELDOUT = "vllm_memory_cases.jsonl", "vllm_cases_v2_tuning.jsonl", "vllm_cases_v2_heldout.jsonl"
HELDOUT2 = "vllm_cases_v2_heldout2.jsonl"  # scored once; tuning data since
HELDOUT3 = "vllm_cases_v2_heldout3.jsonl"  # scored once, after the freeze at 659da44
HELDOUT4 = "vllm_cases_v2_heldout4.jsonl"  # scored once, same freeze
HELDOUT6 = "vllm_cases_v2_heldout6.jsonl"  # scored once at fa40603 (2026-11-27); tuning data since
HELDOUT7 = "vllm_cases_v2_heldout7.jsonl"  # scored once at 9ed4020 (2026-11-27); tuning data since
HELDOUT8 = "vllm_cases_v2_heldout8.jsonl"  # scored once at c81ddf4 (2026-11-27); tuning data since
HELDOUT9 = "vllm_cases_v2_heldout9.jsonl"  # scored once at 3349d93 (2026-11-27); tuning data since
HELDOUT10 = "vllm_cases_v2_heldout10.jsonl"  # one case, scored once at df2c4ed (2026-11-27); tuning data since
HELDOUT11 = "vllm_cases_v2_heldout11.jsonl"  # scored once at 0069270 (2026-11-27); tuning data since
HELDOUT12 = "vllm_cases_v2_heldout12.jsonl"  # scored once at 24544c4 (2026-11-27); tuning data since
HELDOUT13 = "vllm_cases_v2_heldout13.jsonl"  # scored once at f2dd9b1 (2026-11-27); tuning data since
HELDOUT14 = "vllm_cases_v2_heldout14.jsonl"  # scored once at 1e9e7f8 (2026-11-27); tuning data since
HELDOUT15 = "vllm_cases_v2_heldout15.jsonl"  # scored once at e303e4c (2026-11-27); tuning data since
HELDOUT16 = "vllm_cases_v2_heldout16.jsonl"  # scored once at a48a137 (2026-11-27); tuning data since
HELDOUT17 = "vllm_cases_v2_heldout17.jsonl"  # scored once at 7a93aac (2026-11-27); tuning data since
HELDOUT18 = "vllm_cases_v2_heldout18.jsonl"  # scored once at 4256446 (2026-11-27); tuning data since
HELDOUT19 = "vllm_cases_v2_heldout19.jsonl"  # scored once at ecd9c85 (2026-11-27); tuning data since
HELDOUT20 = "vllm_cases_v2_heldout20.jsonl"  # scored once at 22e7edb (2026-11-27); tuning data since
HELDOUT21 = "vllm_cases_v2_heldout21.jsonl"  # scored once at 2c01eda (2026-11-27); tuning data since
HELDOUT22 = "vllm_cases_v2_heldout22.jsonl"  # scored once at 505fb64 (2026-11-28); tuning data since
HELDOUT23 = "vllm_cases_v2_heldout23.jsonl"  # scored once at b732bec (2026-11-28); tuning data since
HELDOUT24 = "vllm_cases_v2_heldout24.jsonl"  # scored once at 6c53ef7 (2026-11-28); tuning data since
HELDOUT25 = "vllm_cases_v2_heldout25.jsonl"  # scored once at f4f47f0 (2026-11-28); tuning data since
ALL_HELDOUT = (HELDOUT, HELDOUT2, HELDOUT3, HELDOUT4, HELDOUT6, HELDOUT7, HELDOUT8, HELDOUT9, HELDOUT10, HELDOUT11,
               HELDOUT12, HELDOUT13, HELDOUT14, HELDOUT15, HELDOUT16, HELDOUT17, HELDOUT18, HELDOUT19,
               HELDOUT20, HELDOUT21, HELDOUT22, HELDOUT23, HELDOUT24, HELDOUT25)
VERDICTS, WEIGHTS_MEDIAN, KV_MEDIAN = 0.95, 0.03, 0.10  # the targets of issue 12


def _run(name: str) -> tuple[list[Run], list[dict[str, Any]]]:
    runs = run_file(name)
    rows = [score(r) for r in runs]
    print(f"\n{name}\n{table(rows)}\n{summarize(rows)}")
    return runs, rows


@pytest.fixture(scope="module")
def tuning() -> tuple[list[Run], list[dict[str, Any]]]:
    return _run(TUNING)


@pytest.fixture(scope="module")
def old() -> tuple[list[Run], list[dict[str, Any]]]:
    return _run(OLD)


@pytest.fixture(scope="module")
def heldout() -> tuple[list[Run], list[dict[str, Any]]]:
    if not (DATA / HELDOUT).is_file():
        pytest.skip("held-out cases are not in tests/data yet")
    return _run(HELDOUT)


def test_cases_cite_their_sources():
    from calibration import load

    every: list[int] = []
    for name in (OLD, TUNING, *ALL_HELDOUT):
        cases = load(name)
        assert cases and len({c["id"] for c in cases}) == len(cases), name
        every += [c["id"] for c in cases if name != OLD]
        # the v2 cases each cite a URL; two of the older public cases name their source in words
        cited = [c for c in cases if str(c.get("source_url") or "").startswith("https://")]
        assert len(cited) == len(cases) if name != OLD else all(c.get("source") for c in cases), name
    assert len(every) == len(set(every))  # a case id names one case across the sets


def _assert_targets(rows: list[dict[str, Any]], kv_median: float = KV_MEDIAN) -> None:
    s = summarize(rows)
    wrong = [(r["id"], r["logged"], r["predicted"], r["codes"]) for r in rows
             if r.get("verdict_scored") and r["logged"] != r["predicted"]]
    assert s.verdict_rate >= VERDICTS, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN, s
    assert s.kv_median <= kv_median, s


def test_tuning_cases_meet_the_targets(tuning):
    _, rows = tuning
    assert sum(1 for r in rows if not r["skip"]) >= 35  # all but the unmodelled Gemma-4 / unified-memory case
    s = summarize(rows)
    assert s.verdicts >= 34 and s.weights_n >= 28 and s.kv_n >= 28, s
    _assert_targets(rows)


def test_public_calibration_cases(old):
    _, rows = old
    s = summarize(rows)
    assert s.verdicts >= 15 and s.verdict_rate == 1.0, [(r["id"], r["logged"], r.get("predicted"))
                                                       for r in rows if r.get("verdict_scored")]
    assert s.weights_median <= WEIGHTS_MEDIAN
    # Two of six KV figures are known anomalies (#3's 9.37 GiB activation, the v0.2.x profiler of #39).
    assert s.kv_median <= 0.15, s


def test_heldout_cases_meet_the_targets(heldout):
    """Weights and KV meet the targets on the held-out cases; the verdicts are guarded at what the frozen
    model scored (16 of 17). The one miss, case 1012, is explained in docs/fit-check.md."""
    _, rows = heldout
    s = summarize(rows)
    assert s.weights_n >= 16 and s.weights_median <= WEIGHTS_MEDIAN, s
    assert s.kv_n >= 14 and s.kv_median <= KV_MEDIAN, s
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    assert s.verdicts >= 17 and wrong <= {1012}, (s, wrong)


def test_heldout2_cases():
    """The second held-out set, tuning data since its scoring. Weights and KV meet the targets; the verdict misses
    are each explained in docs/fit-check.md ("Held-out 2 misses") and guarded here so a new one is seen."""
    runs, rows = _run(HELDOUT2)
    s = summarize(rows)
    assert s.weights_n >= 6 and s.weights_median <= WEIGHTS_MEDIAN, s
    assert s.kv_n >= 3 and s.kv_median <= KV_MEDIAN, s
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 2025: right only through the MXFP4 over-count; its log names no version (see "after round 2")
    # 2004: QwQ-32B bnb on 2 x RTX 5090, two pipeline stages (0.8.5, V0): right while stages were ignored (the
    # whole model counted on one GPU); with them, 67,536 tokens per virtual engine against 58,384 logged and
    # 60,000 asked for (Unsloth's copy loads above plain NF4, see the doc)
    # 2006 (Qwen-7B at 1.0 of an A100, 0.5.3) started and ran out of memory in its first generate(): right since a
    # single server's profiled activations count as free while it starts (a warning, util-too-high-for-peak)
    # 2001 / 2002 (gaunernst/gemma-3-27b-it-int4-awq, resolved by name since session 22: Google's QAT int4 weights
    # in AWQ form, 17.61 GiB loaded against 15.79 counted at AWQ's usual 128-weight groups; QAT's are 32 wide)
    assert s.verdicts >= 14 and wrong <= {2001, 2002, 2004, 2011, 2013, 2015, 2016, 2025}, (s, wrong)
    assert "util-too-high-for-peak" in {f["code"] for r in runs if r.case["id"] == 2006
                                        for f in r.result["gpus"][0]["findings"]}
    by = {r["id"]: r for r in rows}
    assert abs(by[2026]["w_err"]) < 0.03  # gpt-oss-120b MXFP4 experts as the kernel stores them
    assert abs(by[2006]["w_err"]) < 0.01  # Qwen-1 MLP width (intermediate_size // 2)
    assert abs(by[2003]["kv_err"]) < 0.05  # L40S x2: PCIe, no NVLink all-reduce memory


def test_heldout3_cases():
    """The third held-out set as scored once after the freeze: 4 of 5 verdicts; its misses are explained in
    docs/fit-check.md ("Held-out 3") and guarded here so that a new miss or a lost case is seen."""
    _, rows = _run(HELDOUT3)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 3012: right only through the Nemotron-H over-count; with the Mamba rules and its stated inputs (no SSM
    # dtype shown, so 0.10.1's bf16 default) it is predicted to start; the reporter ran a float32 state
    # 3021: the excerpt does not say which A800 (40 or 80 GB); named as CUDA prints it, "NVIDIA A800" is the
    # catalogue's 80 GB card, while failing at 0.4 points to the 40 GB one
    # 3022: Qwen3-VL-8B on an 80 GB A800 "No available memory for the cache blocks", title and GPU list only;
    # it runs since the catalogue knows Qwen3-VL, and an 8B model cannot fill 80 GB at the defaults
    assert s.verdicts >= 11 and wrong <= {3011, 3012, 3021, 3022}, (s, wrong)
    assert abs({r["id"]: r for r in rows}[3012]["w_err"]) < 0.01  # layer mix + Mamba2 parameters


def test_heldout4_cases():
    """The fourth held-out set (second scoring: three model configs completed): 13 of 14 verdicts, weights and KV
    within the targets; the miss (4002) is explained in docs/fit-check.md ("Held-out 4"): its weights now match
    (MXFP4 rule), its row sums to 0.95 x the card while the case records 0.9."""
    _, rows = _run(HELDOUT4)
    s = summarize(rows)
    assert s.weights_n >= 13 and s.weights_median <= WEIGHTS_MEDIAN, s
    assert s.kv_n >= 11 and s.kv_median <= KV_MEDIAN, s
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    assert s.verdicts >= 14 and wrong <= {4002}, (s, wrong)
    by = {r["id"]: r for r in rows}
    assert abs(by[4001]["w_err"]) < 0.01 and abs(by[4002]["w_err"]) < 0.01  # MXFP4 experts, Triton layout


def test_heldout6_cases():
    """The sixth held-out set (55 cases from two blind gatherers). Scored once at the freeze (fa40603): 14 of 55
    could run, 8 of those verdicts right; most of the rest named models the catalogue lacked (Unsloth copies,
    new families). Since then tuning data: copies resolve by repository name, V0's sampler takes ~33 B per
    logit, MIG slices and non-memory failures are read as such (docs/fit-check.md, "Held-out 6"). The misses
    left are explained there and guarded here."""
    _, rows = _run(HELDOUT6)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 6025: Qwen3-VL-30B-A3B at 0.95 ran out of memory after its KV cache was sized (the vision profile
    # is under-counted: 6024's logged KV cache is 8.04 GiB where 11.6 are predicted; see the doc)
    # 6106: Gemma-4-31B NVFP4 on 2 x L4, "started" in the author's table with no serving flags shown; at the
    # model's 262,144-token default one request needs 11.2 GiB of the 7.9 left once the global layers are
    # full-length (before, every layer counted as sliding and it fit): the recipe set a shorter context
    # 6116 (opt-125m beside ~15 GB of other processes, 0.1.3) is right since the harness passes what the
    # author says other processes held (gpu_held_by_others_gib)
    # 6104 (Gemma-4-31B NVFP4 on two 16 GB RTX 5070s, 0.21, one sequence, "OOM" in the poster's words without an
    # error line): 0.5 GiB of KV predicted; since the graph pool shrinks with max_num_seqs (round 13) it fits
    assert s.verdicts >= 46 and wrong <= {6025, 6029, 6102, 6104, 6106}, (s, wrong)
    assert s.kv_n >= 19 and s.kv_median <= KV_MEDIAN, s
    assert s.weights_n >= 24 and s.weights_median <= 0.05, s  # bitsandbytes copies: see the doc
    by = {r["id"]: r for r in rows}
    assert by[6103]["predicted"] == "started" and by[6014]["predicted"] == "failed"  # V0 sampler; MIG slice
    # V0's mllama profile: 256 four-tile images fail even on 80 GB; 32 sequences start (6112 / 6113)
    assert by[6112]["predicted"] == "failed" and by[6113]["predicted"] == "started"
    assert abs(by[6000]["w_err"]) < 0.03  # a Q8_0 GGUF file, embeddings quantised too


def test_heldout7_cases():
    """The seventh held-out set (40 cases from three blind gatherers: repository files, issue threads, pages
    and forums). Scored once at the freeze (9ed4020): 28 could run, 24 verdicts right, weights 0.2 % (14),
    KV 2.4 % (11). Since then tuning data: AWQ copies are float16 (7105) and vLLM < 0.3's AWQ split-k
    buffers are counted (7105's KV: +252 % -> +3 %). The misses left are explained in docs/fit-check.md."""
    _, rows = _run(HELDOUT7)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 7101: Qwen3-30B-A3B on 4 x A10 ran out of memory capturing CUDA graphs (MoE graphs outgrow the per-layer
    # estimate); 7110: a 1.5B model on 4 x L4 "should fit" (environment); 7205: Kimi-VL's encoder asked for
    # 408 GiB without flash-attention (the maintainer's reading)
    # 7201: MiniMax-M2.7 AWQ on 2 x GB10 (0.29): vLLM's own CUDA-graph estimate took ~5 GiB inside the budget
    # ("0.80 effectively 0.758"), MoE graphs again far above the per-layer estimate
    # 7203: Unsloth's standby mode (UNSLOTH_VLLM_STANDBY=1) sized the KV cache 2.3 GiB over the budget and ran out
    # of memory in the sampler warm-up; it runs since Qwen3-4B-Thinking-2507 is in the catalogue (session 18)
    # 7005 (gemma-3-12b QAT in AWQ form, TP 2, V1 0.8.4) is right since session 23: vLLM 0.8.3-0.9.0 checked one
    # request with the sliding-window layers at their window, then allocated every layer in full (the source
    # archives on PyPI); it started at 0.53x concurrency
    assert s.verdicts >= 31 and wrong <= {7101, 7110, 7201, 7203, 7205}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s
    by = {r["id"]: r for r in rows}
    assert abs(by[7105]["kv_err"]) < 0.05


def test_heldout8_cases():
    """The eighth held-out set: three more blind gatherers found only 6 new cases in the stored sources (they
    are nearly exhausted). Scored once at c81ddf4: 4 ran, 4 verdicts right, but 8200 (DeepSeek-V3 on
    8 x 4 RTX 4090s, TP 8 x PP 4) only because pipeline stages were ignored (weights +362 %). With stages
    modelled its heaviest stage fits by 1.2 GiB at 0.98 and it is predicted to start; it ran out of memory."""
    _, rows = _run(HELDOUT8)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    assert s.verdicts >= 4 and wrong <= {8200}, (s, wrong)
    by = {r["id"]: r for r in rows}
    assert by[8200]["w_err"] < 0.25  # the heaviest stage (16 MoE layers) against the first stage's log
    assert abs(by[8000]["kv_err"]) < 0.1  # Gemma-4's global layers and 0.20.2's concurrency token count (-67 % before)


def test_heldout9_cases():
    """The ninth held-out set: logs whose GPU is known only by the total CUDA printed (an "N GB-class" card).
    Scored once at 3349d93: 4 of 5 ran, 3 right, weights 3.4 % (3), KV 5.2 % (3). The miss, 9001, shared its
    80 GB card with a ~39.5 GiB process the log lists only in the OOM message; the harness now passes it
    (gpu_held_by_others_gib) and 0.11 refuses the budget above the free memory."""
    _, rows = _run(HELDOUT9)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    assert s.verdicts >= 4 and not wrong, (s, wrong)
    assert s.weights_median <= 0.05 and s.kv_median <= KV_MEDIAN, s
    # held-out 10: the last blind gatherer's one case (Qwen2.5-14B on two 40 GB-class cards, 0.7.2): right,
    # weights -1.2 %, KV -1.1 % at its scoring
    _, ten = _run(HELDOUT10)
    assert [(r["logged"], r["predicted"]) for r in ten] == [("started", "started")]
    assert abs(ten[0]["w_err"]) < 0.03 and abs(ten[0]["kv_err"]) < 0.05


def test_heldout11_cases():
    """The eleventh held-out set (35 cases from three blind gatherers: committed notebooks, non-English pages,
    downstream projects' issues). Scored once at 0069270: 31 verdicts, 29 right (93.5 %), weights 12.2 % (26),
    KV 3.8 % (24). 26 of the 35 are vLLM started by Unsloth's notebooks (16 on T4s): its dynamic 4-bit copies
    ("-unsloth-bnb-4bit") keep some layers in 16 bits, which their names do not say (docs/fit-check.md)."""
    _, rows = _run(HELDOUT11)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 11100 and 11203 (the misses at the scoring) shared their GPU: a second vLLM instance on one 4090 (0.8.4,
    # which reads the first instance's memory as its own), five other processes holding 8.6 GiB of a 24 GB card
    # (0.7.2: the KV allocation runs out). Given as users know them (a second server; the memory others hold)
    assert s.verdicts >= 31 and not wrong, (s, wrong)
    assert {c for r in rows if r["id"] in (11100, 11203) for c in r["codes"]} == {"colocated-memory-counted",
                                                                                  "gpu-free-memory-too-low"}
    assert s.kv_n >= 24 and s.kv_median <= KV_MEDIAN, s
    assert s.weights_n >= 26 and s.weights_median <= 0.15, s
    by = {r["id"]: r for r in rows}
    assert abs(by[11011]["w_err"]) < 0.03  # a plain "-bnb-4bit" copy: every linear layer in 4 bits


def test_heldout12_cases():
    """The twelfth held-out set (42 cases from two blind gatherers: committed notebooks and docs where vLLM was
    started directly or by other frameworks, and Unsloth-started runs of models set 11 did not have). Scored once
    at 24544c4: 33 verdicts, 30 right (90.9 %), weights 0.8 % (29), KV 2.5 % (27); LLM-GPU-Calc 31/33, KV 15.0 %."""
    _, rows = _run(HELDOUT12)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 12000: Llama-3.1-8B at 0.99 of an L4 (V0 0.7.3) started; 12003: Llama-2-7B at 0.9 of a T4 (0.4.1) had no
    # blocks left after 12.55 GiB of weights; 12103: Qwen3-1.7B at 0.59 of an 8 GB laptop card started with 3,392
    # tokens (Unsloth ran it with 128 sequences)
    # 12000 is right since the activations its profile measured count as free while it starts (V0 logged them,
    # 2.54 GiB, and the 0.26 GiB of graphs it captured fit in them)
    # 12103 is right since the harness reads the max_num_seqs Unsloth's banner says it passed (128, not 256)
    assert s.verdicts >= 33 and wrong <= {12003}, (s, wrong)
    assert s.weights_n >= 29 and s.weights_median <= WEIGHTS_MEDIAN, s
    assert s.kv_n >= 27 and s.kv_median <= KV_MEDIAN, s


def test_heldout13_cases():
    """The thirteenth held-out set (19 cases from two blind gatherers: markdown / text logs, notebooks not started
    by Unsloth). Scored once at f2dd9b1 (after rounds 7 and 8): 14 verdicts, 14 right, weights 0.7 % (15), KV
    2.2 % (12); LLM-GPU-Calc 14/14, KV 5.0 %. Every target of issue 12 is met on this set, a small one (2 failures
    among the 14 verdicts)."""
    _, rows = _run(HELDOUT13)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 13007 ran once the catalogue learned that Qwen3-4B-Thinking-2507 has the Instruct-2507 shape: a miss. It ran
    # with LoRA enabled, and vLLM 0.19.1 estimated 4.79 GiB of CUDA graphs for a 4B model (LoRA is not an input)
    assert s.verdicts >= 15 and wrong <= {13007}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s


def test_heldout14_cases():
    """The fourteenth held-out set (13 cases from two blind gatherers: job output committed from clusters, training
    frameworks that start vLLM). Scored once at 1e9e7f8: 10 verdicts, 7 right, weights 0.8 % (7), KV 15.7 % (7)."""
    _, rows = _run(HELDOUT14)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    # 14100 (Qwen3-0.6B at 0.8 of an L4 beside an FSDP trainer's 0.8 GiB, 0.26) and 14103 (Qwen3-32B at 0.9 of an
    # H20, 0.8.5, 1,024 sequences) ran out of memory warming up the sampler after the KV cache was allocated, as
    # 1012 and 6029 did; 14102 (a 0.25 server started beside a 0.60 one on one H100, both profiling at once)
    assert s.verdicts >= 10 and wrong <= {14100, 14102, 14103}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s
    # 14009 (Qwen3.5-27B, 0.19): +307 % until the printed token count divided over the linear layers' slots too
    by = {r["id"]: r for r in rows}
    assert abs(by[14009]["kv_err"]) < 0.05


def test_heldout15_cases():
    """The fifteenth held-out set (21 cases from three blind gatherers: vLLM's own tracker on recent builds, pages
    and docs, other projects' trackers; 19 failures). Scored once at e303e4c: 17 verdicts, 9 right, weights 3.7 %
    (1), no KV figure."""
    _, rows = _run(HELDOUT15)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # 15003: 0.6.4 counted a co-located 72B server's memory as its own (PR #9352's profiler); 15207: torch's OOM
    # message lists two other processes beside "this process" (12.76 GiB) on a 0.2.4 card sized from its total
    assert by[15003]["predicted"] == "failed" and by[15207]["predicted"] == "failed"
    # 15000 (0.8.4 TP2, out of memory compiling / capturing after the KV cache), 15004 (a user's GPTQ copy of a
    # NAS-pruned 49B on V0 at 32,768 tokens: 5.1 GiB of KV predicted, 6.1 needed, it started), 15005 (sampler
    # warm-up on an RTX 2080 Ti, 0.2 GiB of margin by the model's count), 15100 (0.2.6 Mixtral AWQ, out of memory
    # profiling 32,768 tokens), 15103 (Unsloth's NVFP4 Qwen3.6-27B: weights of an unknown mix of FP8 / NVFP4 /
    # 16-bit layers), 15208 (Qwen3-VL-235B TP8 with expert parallelism, CUDA error after the start-up phases)
    assert s.verdicts >= 17 and wrong <= {15000, 15004, 15005, 15100, 15103, 15208}, (s, wrong)


def test_heldout16_cases():
    """The sixteenth held-out set (43 cases from three blind gatherers: vLLM pull-request threads, older builds' issue
    threads read through two repositories that keep copies of them, hub discussions). Scored once at a48a137: 37
    verdicts, 29 right, weights 0.6 % (26), KV 10.6 % (19)."""
    _, rows = _run(HELDOUT16)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # round 12: --cpu-offload-gb (16002: 61.29 GiB logged on the GPU), other instances' memory the sources state
    # (16113 / 16126 / 16130 / 16131: builds that read it as their own), VLLM_USE_V1=1 on 0.7 (16131)
    assert by[16002]["predicted"] == "started" and abs(by[16002]["w_err"]) < 0.01
    assert all(by[i]["predicted"] == "failed" for i in (16113, 16126, 16130, 16131))
    # 16004 (Llama-3-8B at 0.92 of four L4s, 0.23: FULL CUDA-graph capture short by 60-130 MiB, the author says)
    # and 16100 (gemma-2-9b on eight L4s, 0.5.4: out of memory capturing the graphs): graph pools at TP 4 / 8
    # 16123 (an RTX 3070 Laptop under WSL2, scored since session 25 added the card: vLLM 0.7.3's V1 alpha loaded
    # all 14.25 GiB of Qwen2.5-7B on the 8 GB card despite cpu_offload_gb=12, Windows lending it system memory)
    assert s.verdicts >= 37 and wrong <= {16004, 16100, 16123}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN, s


def test_heldout17_cases():
    """The seventeenth held-out set (43 cases from two blind gatherers working through vLLM issue threads that the
    set-16 gatherer listed, read through stored copies of them). Scored once at 7a93aac: 25 verdicts, 15 right,
    weights 2.3 % (5), KV 8.4 % (11)."""
    _, rows = _run(HELDOUT17)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # round 13: the graph pool shrinks with max_num_seqs (17222: Llama-3.1-70B AWQ at 0.97 of two 4090s with one
    # sequence, started); an untagged checkout's "0.1.dev" version is not 0.1 (17220, ~0.19); a hang after the KV
    # cache was sized is not a memory outcome (17205)
    assert by[17222]["predicted"] == "started" and by[17220]["predicted"] == "started"
    assert not by[17205].get("verdict_scored")
    # misses left (docs/fit-check.md "Held-out 16 and 17"): 17000 (a pre-0.1 CacheFlow build, out of memory
    # after its KV cache), 17008 (mllama's V0 profile at TP 4: the real peak is above 75 GiB per rank, the model
    # counts 55), 17212 (sampler warm-up, 0.12 on a T4), 17215 (online FP8 with the streaming loader beside 9 GiB of
    # another process), 17219 (Qwen3-4B on a 16 GB RTX 5080: 0.8 GiB more overhead than modelled, no total logged),
    # 17221 (17222 with sleep mode), 17223 (NVFP4 weights allocated at BF16 size, the author's reading),
    # 17226 (--cpu-offload-gb 300 on a GH200, 0.20: far less was offloaded than asked)
    assert s.verdicts >= 24 and wrong <= {17000, 17008, 17212, 17215, 17219, 17221, 17223, 17226}, (s, wrong)


def test_heldout18_cases():
    """The eighteenth held-out set (13 cases from two blind gatherers: leads earlier gatherers left, and a search for
    other stored copies of vLLM threads, which found none). Scored once at 4256446: 11 verdicts, 7 right."""
    _, rows = _run(HELDOUT18)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # round 14: hybrid state blocks against max_num_seqs (18202), "Free memory on cuda:0 (38.74/121.63 GiB)" as a
    # user shortened vLLM's refusal (18200)
    assert "gpu-free-memory-too-low" in by[18200]["codes"] and by[18202]["predicted"] == "failed"
    # 18201 (the same GB10 server at 32,768 tokens, started: 27.65 GiB of KV logged where 3.78 are predicted -- the
    # unified-memory GB10's accounting), 18210 (DJL LMI on an A10G, 0.2.7: max_model_len assumed 32,768), 18211
    # (gpt-oss-120b TP 8 on RTX PRO 4500s, 0.28: out of memory after the KV cache, a full card)
    assert s.verdicts >= 11 and wrong <= {18201, 18210, 18211}, (s, wrong)


def test_heldout19_cases():
    """The nineteenth held-out set (42 cases from three blind gatherers: repositories that commit vLLM server logs,
    notebooks' saved outputs, non-English write-ups). Scored once at ecd9c85: 31 verdicts, 27 right (weights 3.3 %,
    KV 4.5 %)."""
    _, rows = _run(HELDOUT19)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring: the keyword arguments of an LLM(...) call (19001: cpu_offload_gb=8), the offload and
    # the ECC card's visible total the source states transcribed (19207 / 19208, see their notes)
    assert by[19001]["predicted"] == "started" and by[19207]["predicted"] == "failed"
    assert "kv-cache-too-small" in by[19207]["codes"]
    # 19004 (Qwen3-8B on a 4090, 0.24.0, vLLM's defaults: 40,960 tokens asked for, 43,888 logged) is right since
    # session 23: 0.24 runs Qwen3 on its model runner V2, whose profile leaves the CUDA graphs out (43,936 predicted)
    assert by[19004]["predicted"] == "started"
    # 19211 (not a memory failure: an exception in the attention forward after the KV cache was sized, with an
    # explicit bfloat16 KV dtype, on a 4090 of uncertain size)
    # 19201 (an RTX 4070 Laptop under WSL2, scored since session 25 added the card: CUDA there reports all 8.0 GiB,
    # the catalogue the 7.65 a Linux log shows; with --gpu-visible-gib 8 it is right)
    assert s.verdicts >= 31 and wrong <= {19211, 19201}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s


def test_heldout20_cases():
    """The twentieth held-out set (24 cases from one blind gatherer: further runs in the repositories set 19 found,
    each a different run). Scored once at 22e7edb: 15 verdicts (8 non-memory failures not scored), 14 right."""
    _, rows = _run(HELDOUT20)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring: the YaRN factor the source states (20003: 131,072 tokens of Qwen3-8B at factor 3.2)
    # transcribed, and the harness passes a case's rope scaling (or a quoted --rope-scaling / --hf-overrides) on
    assert by[20003]["predicted"] == "started" and "--rope-scaling" in by[20003]["argv"]
    assert s.verdicts >= 15 and not wrong, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s


def test_heldout21_cases():
    """The twenty-first held-out set (33 cases from two blind gatherers: runs on cards the log names only by their
    torch-visible total, and named-card leads). Scored once at 2c01eda (the fit-check of 32471dc): 24 verdicts,
    20 right (the harness first read the new "unnamed (80 GB class; ...)" GPU form: 9 scored, 7 right)."""
    _, rows = _run(HELDOUT21)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring: Marlin kernels run on Turing from 0.14 (21104: awq_marlin on a T4 under 0.17.1), and
    # the harness reads a `vllm serve --config` YAML file's settings (21106: max-num-seqs 1)
    assert by[21104]["predicted"] == "started" and by[21106]["predicted"] == "started"
    # 21021 (Qwen3.6-27B at TP 2, 0.27.1, 1,024 sequences) is right since session 23: vLLM counts state blocks as
    # KV // page // group size (16 layers here, not all 64) in pages of the float32 state the config names
    assert by[21021]["predicted"] == "started"
    # left: 21004 (a TP-2 start on a GPU another job held 44.73 GiB of; the log cannot say which listed process is
    # vLLM's), 21109 (Qwen2-VL-72B, in the catalogue since session 22: a TP-2 start at 0.95 of two H100s that ran out
    # of memory warming the sampler up after the KV cache was sized, 1012's class)
    assert s.verdicts >= 24 and wrong <= {21004, 21109}, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= KV_MEDIAN, s


def test_heldout22_cases():
    """The twenty-second held-out set (11 cases from two blind gatherers: pages and write-ups, recent releases).
    Scored once at 505fb64: 7 verdicts, all right; weights 0.9 %, KV 10.8 % (7)."""
    _, rows = _run(HELDOUT22)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring the harness reads a flag in a Kubernetes args list (22009: "- --quantization" /
    # "- fp8") and the card size a case states (22007: an "A100" of a 40 GB machine type)
    assert "fp8" in by[22009]["argv"] and "A100-40GB" in by[22007]["argv"]
    assert s.verdicts >= 7 and not wrong, (s, wrong)
    assert s.weights_median <= WEIGHTS_MEDIAN and s.kv_median <= 0.05, s


def test_heldout23_cases():
    """The twenty-third held-out set (8 cases from one blind gatherer: leads sets 21-22 left). Scored once at b732bec:
    7 verdicts, all right; weights 0.6 % (6), KV 4.8 % (6)."""
    _, rows = _run(HELDOUT23)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring the harness reads pipeline stages from the engine's config line (23004 / 23005: TP 4 x
    # PP 2, weights +99 % -> -0.2 %); their KV tokens stay -50 %: the fit-check counts one of V0's two virtual
    # engines, the log's blocks are both (KV GiB within 2.4 %)
    assert "--pipeline-parallel-size" in by[23004]["argv"] and abs(by[23004]["kv_err"] + 0.5) < 0.02
    assert s.verdicts >= 7 and not wrong, (s, wrong)
    assert s.weights_median <= 0.01 and s.kv_median <= KV_MEDIAN, s


def test_heldout24_cases():
    """The twenty-fourth held-out set (7 cases from notebooks and a Korean write-up; a second lane on recent builds
    found none). Scored once at 6c53ef7: 5 verdicts, all right; weights 4.3 % (3: Unsloth runs, LoRA buffers of a rank
    their logs do not state), KV 3.9 % (4)."""
    _, rows = _run(HELDOUT24)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    # after the first scoring the harness reads nvidia-smi's "NVIDIA A100 80GB PCIe" as the PCIe card (it matched the
    # SXM one): no NVLink, smaller TP 2 all-reduce buffers; 24006's KV tokens -34 % -> -3 %
    assert "a100-pcie-80gb" in by[24006]["argv"] and abs(by[24006]["kv_err"]) < 0.05
    assert s.verdicts >= 5 and not wrong, (s, wrong)
    assert s.weights_median <= 0.05 and s.kv_median <= 0.05, s


def test_heldout25_cases():
    """The twenty-fifth held-out set (7 cases: a lane on recent builds and hybrid models; 3 name a Qwen3.8-27B whose
    config is not at hand, 1 an NVFP4 copy of unstated origin). Scored once at f4f47f0, after session 23's rules read
    in vLLM's source archives: 3 verdicts, all right. Two are hybrids refused for their state blocks; one logs them:
    25004 (Qwen3.6-27B-FP8 at 0.95 of an H100, 0.20) 856 blocks, 869 predicted (KV // page // group size, in the
    config's float32 state). 25000 logged 614 for "a hybrid Qwen model such as Qwen3.6-27B" (the model is not sure)."""
    from biofleet.catalog.gpus import get_gpu
    from biofleet.catalog.models import get_model
    from biofleet.fitcheck import ServerInput, check_server_on_gpu, resolve, state_blocks

    _, rows = _run(HELDOUT25)
    s = summarize(rows)
    wrong = {r["id"] for r in rows if r.get("verdict_scored") and r["logged"] != r["predicted"]}
    by = {r["id"]: r for r in rows}
    assert s.verdicts >= 3 and not wrong, (s, wrong)
    assert "state-blocks-below-max-num-seqs" in by[25004]["codes"]
    server = ServerInput(name="s", model=get_model("Qwen/Qwen3.6-27B-FP8"), vllm_version="0.20",
                         gpu_memory_utilization=0.95)
    h100 = get_gpu("H100-80GB")
    kv = check_server_on_gpu(server, h100).servers[0].kv_cache_gib
    assert state_blocks(server, resolve(server, h100), kv) == pytest.approx(856, rel=0.03)


def test_others_in_an_oom_message():
    from calibration import _others_in_oom

    msg = ("GPU 0 has a total capacty of 80 GiB of which 176.38 MiB is free. Process 4683 has 11.05 GiB memory in "
           "use. Process 16753 has 1.71 GiB memory in use. Including non-PyTorch memory, this process has 18.80 GiB")
    listed = msg.split(". ", 1)[1]  # without the capacity clause: the processes torch lists, each once
    assert _others_in_oom(listed + "\n" + listed) == pytest.approx(12.76)
    # with it: the total less the free memory and this process's (what torch could not list counts too)
    assert _others_in_oom(msg + "\n" + msg) == pytest.approx(80 - 176.38 / 1024 - 18.80, abs=0.01)
    desktop = ("GPU 0 has a total capacity of 23.54 GiB of which 139.75 MiB is free. Process 4257 has 83.54 MiB memory "
               "in use. Process 11017 has 133.29 MiB memory in use. Including non-PyTorch memory, this process has "
               "21.72 GiB memory in use.")  # case 1059: an RTX 3090 whose display holds 1.47 GiB torch cannot list
    assert _others_in_oom(desktop) == pytest.approx(1.68, abs=0.01)
    assert _others_in_oom("Process 7 has 512.00 MiB memory in use. this process has 1 GiB") == pytest.approx(0.5)
    # in a container torch lists the failing process by pid too: nothing is taken as another's
    assert _others_in_oom("Process 3941857 has 79.07 GiB memory in use. Of the allocated memory ...") == 0


@pytest.mark.xfail(strict=True, reason="held-out verdicts are 16/17 = 94%, below the 95% target: case 1012 "
                   "(gpt-oss-20b at 0.95 of an H100, vLLM 0.19) ran out of memory warming up the sampler after "
                   "CUDA-graph capture, outside the budget the fit-check models; see docs/fit-check.md")
def test_heldout_verdict_target(heldout):
    _, rows = heldout
    assert summarize(rows).verdict_rate >= VERDICTS


def test_failure_reasons(old, tuning):
    by = {r["id"]: r for r in old[1] + tuning[1]}
    assert "no-kv-memory" in by[6]["codes"] and "no-kv-memory" in by[12]["codes"]
    assert "kv-cache-too-small" in by[21]["codes"]
    assert "util-sum-too-high" in by[45]["codes"]  # two TP8 servers on the same eight A100s
    assert "bf16-unsupported" in by[63]["codes"]  # vLLM 0.5.1 did not fall back to float16
    assert "gpu-free-memory-too-low" in by[1013]["codes"] and "gpu-free-memory-too-low" in by[1052]["codes"]
    assert "no-kv-memory" in by[1048]["codes"]  # 0.6125 x A10G cannot hold 14.3 GiB of weights


# ----------------------------------------------------------------- the calculators people use instead

def _calculator_rows(runs: list[Run]) -> dict[str, list[tuple[dict[str, Any], Answer | None]]]:
    out: dict[str, list[tuple[dict[str, Any], Answer | None]]] = {n: [] for n in CALCULATORS}
    for run in runs:
        row = score(run)
        f = facts(run)
        if f is None or not row.get("verdict_scored"):
            continue
        for name, calc in CALCULATORS.items():
            out[name].append((row, calc(f)))
    return out


def _calc_stats(pairs: list[tuple[dict[str, Any], Answer | None]]) -> tuple[int, int, float | None, float | None]:
    right = w_err = kv_err = 0
    ws: list[float] = []
    ks: list[float] = []
    for row, a in pairs:
        if a is None:
            continue
        if a.fits is not None and a.fits == (row["logged"] == "started"):
            right += 1
        if a.weights_gib is not None and "w_log" in row:
            ws.append(abs(a.weights_gib - row["w_log"]) / row["w_log"])
        if a.kv_tokens is not None and "t_log" in row:
            ks.append(abs(a.kv_tokens - row["t_log"]) / row["t_log"])
    del w_err, kv_err
    return right, len(pairs), statistics.median(ws) if ws else None, statistics.median(ks) if ks else None


def calculators_table(runs: list[Run]) -> tuple[str, dict[str, tuple[int, int, float | None, float | None]]]:
    per = _calculator_rows(runs)
    rows = [score(r) for r in runs]
    scored = [r for r in rows if r.get("verdict_scored") and facts_ok(r, runs)]
    ours_right = sum(r["logged"] == r["predicted"] for r in scored)
    ws = [abs(r["w_err"]) for r in scored if "w_err" in r]
    ks = [abs(r["kv_err"]) for r in scored if "t_log" in r]
    stats = {"biofleet fit-check": (ours_right, len(scored), statistics.median(ws) if ws else None,
                                    statistics.median(ks) if ks else None)}
    stats.update({name: _calc_stats(pairs) for name, pairs in per.items()})

    def pct(x: float | None) -> str:
        return "no figure" if x is None else f"{x * 100:.1f}%"

    lines = ["| tool | verdicts right | weights median error | KV-token median error |", "|---|---|---|---|"]
    lines += [f"| {n} | {r}/{t} | {pct(w)} | {pct(k)} |" for n, (r, t, w, k) in stats.items()]
    return "\n".join(lines), stats


def facts_ok(row: dict[str, Any], runs: list[Run]) -> bool:
    run = next(r for r in runs if r.case["id"] == row["id"])
    return facts(run) is not None


def test_biofleet_beats_every_public_calculator(tuning, old):
    runs = tuning[0] + old[0]
    text, stats = calculators_table(runs)
    print("\ncalculators on the tuning + public cases\n" + text)
    ours = stats.pop("biofleet fit-check")
    for name, (right, total, _w, kv) in stats.items():
        assert total == ours[1], name  # the same cases
        assert ours[0] > right, (name, ours, right)
        assert kv is None or (ours[3] is not None and ours[3] < kv), (name, ours[3], kv)


def test_biofleet_beats_every_public_calculator_on_all_heldout_sets():
    """Every held-out set pooled (each scored once with a frozen model, tuning data since): on small sets a
    calculator can tie or win (held-out 3 and 4, docs/fit-check.md); on all of them together it does not."""
    runs = [run for name in ALL_HELDOUT for run in run_file(name)]
    text, stats = calculators_table(runs)
    print("\ncalculators on every held-out set\n" + text)
    ours = stats.pop("biofleet fit-check")
    for name, (right, total, _w, kv) in stats.items():
        assert total == ours[1], name
        assert ours[0] > right, (name, ours, right)
        assert kv is None or (ours[3] is not None and ours[3] < kv), (name, ours[3], kv)


def test_biofleet_beats_every_public_calculator_heldout(heldout):
    text, stats = calculators_table(heldout[0])
    print("\ncalculators on the held-out cases\n" + text)
    ours = stats.pop("biofleet fit-check")
    for name, (right, _total, _w, kv) in stats.items():
        assert ours[0] > right, (name, ours, right)
        assert kv is None or (ours[3] is not None and ours[3] < kv), (name, ours[3], kv)
