"""Device check: peak GPU memory of a sort-based top-k / top-p sampling pass, in bytes per logit.

Needs a CUDA GPU and PyTorch; not part of the test suite. Run it on a GPU node:

    python3 scripts/device/sampler_peak.py --out sampler.json

vLLM's profiling pass ends with a sampler warm-up over ``rows`` dummy requests (256 by default) whose
sampling parameters force the top-k / top-p path: before FlashInfer's sampler (V0, and V1 before 0.17)
that path sorts the float32 logits of every row. The fit-check charges it ``rows x vocab x b`` bytes
(``b`` = 33 in V0, 40 in V1 before 0.17, fitted on logged activation peaks). This script runs the same
sequence of tensor operations as such a sampler, written here from its description (logits to float32,
temperature, sort, top-k and top-p masks on the sorted values, scatter back, softmax, log-softmax,
exponential race), and reports its peak allocation above the input logits as bytes per logit. It is
this sequence's figure, not vLLM's own code; vLLM versions differ in which intermediates they keep.
"""

from __future__ import annotations

import argparse
import json


def run(rows: int, vocab: int, logits_dtype: str) -> dict[str, float]:
    import torch

    dev = torch.device("cuda")
    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[logits_dtype]
    hidden = torch.randn(rows, vocab, device=dev, dtype=dt)  # the lm_head output the sampler receives
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()

    logits = hidden.float()
    logits.div_(torch.full((rows, 1), 0.7, device=dev))
    k = torch.full((rows,), vocab - 1, device=dev, dtype=torch.long)
    p = torch.full((rows,), 0.99, device=dev)
    sorted_logits, idx = logits.sort(dim=-1, descending=False)
    kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))
    sorted_logits.masked_fill_(sorted_logits < kth, -float("inf"))
    probs_sort = sorted_logits.softmax(dim=-1)
    cum = probs_sort.cumsum(dim=-1)
    mask = cum <= 1 - p.unsqueeze(1)
    mask[:, -1] = False
    sorted_logits.masked_fill_(mask, -float("inf"))
    del probs_sort, cum, mask
    logits = torch.empty_like(sorted_logits).scatter_(dim=-1, index=idx, src=sorted_logits)
    del sorted_logits, idx
    probs = logits.softmax(dim=-1, dtype=torch.float)
    logprobs = logits.log_softmax(dim=-1, dtype=torch.float)
    q = torch.empty_like(probs).exponential_()
    token = probs.div(q).argmax(dim=-1)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del logits, probs, logprobs, q, token
    return {"rows": rows, "vocab": vocab, "logits_dtype": logits_dtype, "peak_gib": peak / 1024 ** 3,
            "bytes_per_logit": peak / (rows * vocab)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the results here as JSON")
    ns = ap.parse_args()
    import torch

    runs = []
    for rows, vocab in ((256, 32000), (256, 151936), (256, 256000), (1024, 151936)):
        for dt in ("float16", "bfloat16"):
            runs.append(run(rows, vocab, dt))
            print(json.dumps(runs[-1]), flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": runs}
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
