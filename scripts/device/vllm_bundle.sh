#!/bin/bash
# Device check helper: put a vLLM wheel bundle carried over in parts back together, install it beside the image's
# PyTorch and run scripts/device/vllm_startup.py. The device machines cannot fetch packages and a call carries at
# most 64 MiB, so the bundle (vLLM 0.23.0 for torch 2.11 / CUDA 13 without its FA2, MoE and Rust-frontend
# binaries, and the packages the image lacks) travels as a tar split in 50 MiB parts, one part per call, gathered
# in PARTS on the machine while it stays warm.
# Making the bundle (here, where PyPI answers): download vllm==0.23.0 (manylinux_2_28_x86_64), unzip it, delete
# vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so, vllm/_moe_C.abi3.so and vllm/vllm-rs, zip it again; `pip download
# --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ...` the pins in
# scripts/device/vllm023-bundle.txt (what vLLM 0.23 imports that the image lacks or has in another version, FlashInfer
# left out: the runs set VLLM_USE_FLASHINFER_SAMPLER=0); tar the wheels, `split -b 50M`, carry one part per call.
# usage: scripts/device/vllm_bundle.sh PARTS SHA256 OUT [CONFIG [vllm_startup.py options]]
set -u
parts=$1 sum=$2 out=$3 config=${4:-tests/data/model_configs/Qwen--Qwen3-8B.json}
cat "$parts"/part.* > /tmp/bundle.tar
got=$(sha256sum /tmp/bundle.tar | cut -c1-64)
if [ "$got" != "$sum" ]; then
    echo "bundle incomplete: $(find "$parts" -name 'part.*' -printf '%f ') (sha256 $got)"; exit 3
fi
rm -rf /tmp/bw /tmp/site && mkdir -p /tmp/bw && tar -xf /tmp/bundle.tar -C /tmp/bw || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/bw/*.whl || exit 5
export PYTHONPATH=/tmp/site
shift 4 2>/dev/null || shift 3
python3 scripts/device/vllm_startup.py --config "$config" --out "$out" --timeout 150 "$@"
