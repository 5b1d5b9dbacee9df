"""An elastic fleet on a real vLLM: the shipped cpu-vllm-elastic profile on the test SLURM cluster.
The first request is held through a real cold start from zero (sbatch, vLLM loading on CPUs, its
first probe), answered through the openai client, and the replica is released when idle.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from vllm_env import cpu_models, require_vllm, vllm_processes

from biofleet.elastic.state import load_elastic_state
from biofleet.fleet import collect_status, down, open_fleet, up
from biofleet.profile import load_profile

pytestmark = [pytest.mark.vllm, pytest.mark.slurm]


def test_cpu_vllm_cold_start_from_zero_and_back(slurm_cluster, tmp_path):
    python = require_vllm()
    models = cpu_models(tmp_path / "models", python)
    ref = tmp_path / "cpu-vllm-elastic-test.yaml"
    # One vLLM is enough on 2 cores: the embedding server is made elastic too (min 0), and only
    # "tiny" is asked for.
    ref.write_text(
        "extends: cpu-vllm-elastic\nname: cpu-vllm-elastic-test\ncluster:\n"
        f"  workdir: {tmp_path}/work\n  python: {python}\n  mem: 4G\n"
        f"  setup: ['export PATH={Path(sys.executable).parent}:$PATH']\n"
        f"servers:\n  tiny:\n    model: {models}/tiny-llama\n"
        "    scaling: {target: 4, idle_s: 10, cold_start_s: 300, poll_s: 1, keepalive_s: 5}\n"
        f"  embeddings:\n    model: {models}/all-MiniLM-L6-v2\n    replicas: {{min: 0, max: 1}}\n"
    )
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=120, poll=1.0)
            assert res.submitted == [] and not res.timed_out  # nothing but the proxy at zero
            token = Path(fleet.paths.token).read_text().strip()
            from openai import OpenAI

            client = OpenAI(base_url=f"{res.status.proxy.url}/v1", api_key=token, timeout=300, max_retries=0)
            streamed: list[str] = []

            def stream() -> None:
                for piece in client.chat.completions.create(model="tiny", stream=True, max_tokens=8,
                                                            messages=[{"role": "user", "content": "hello"}]):
                    streamed.extend(c.delta.content or "" for c in piece.choices)

            t = threading.Thread(target=stream)
            t0 = time.monotonic()
            t.start()  # held, with SSE keep-alive comments the openai client skips
            chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=8)
            cold = time.monotonic() - t0
            t.join(300)
            print(f"\ncold start from zero through SLURM (sbatch -> vLLM ready -> answer): {cold:.1f}s")
            assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
            assert streamed, "the held streaming request got no tokens"
            j = load_elastic_state(fleet.runner, fleet.paths)
            assert [d.action for d in j.decisions if d.server == "tiny"][:2] == ["scale-up", "ready"]
            st = collect_status(fleet)
            tiny = next(e for e in st.elastic if e.server == "tiny")
            assert tiny.ready == 1 and tiny.last_cold_start_s is not None
            assert vllm_processes(str(models))

            # idle past idle_s: drained, cancelled, its vLLM gone
            deadline = time.monotonic() + 90
            while load_elastic_state(fleet.runner, fleet.paths).live("tiny"):
                assert time.monotonic() < deadline, "tiny never scaled back to zero"
                time.sleep(1)
            deadline = time.monotonic() + 60
            while vllm_processes(str(models)):
                assert time.monotonic() < deadline, "vLLM still running after scale to zero"
                time.sleep(1)
            acts = [d.action for d in load_elastic_state(fleet.runner, fleet.paths).decisions if d.server == "tiny"]
            assert acts[-2:] == ["drain", "cancel"], acts
        finally:
            down(fleet)
