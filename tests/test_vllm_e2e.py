"""The whole chain on a real vLLM: SLURM job -> vLLM from the rendered script -> registry ->
status with vLLM's own metrics -> proxy -> the openai client; failover; down.

Uses the shipped cpu-vllm profile (CPU vLLM, a tiny dummy-weight Llama twice, real
all-MiniLM-L6-v2 embeddings) on the test SLURM cluster.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from vllm_env import cpu_models, require_vllm, vllm_processes

from biofleet.fleet import NEEDS_RESUBMIT, ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile

pytestmark = [pytest.mark.vllm, pytest.mark.slurm]


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (vLLM runs an engine-core process beside the API server)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        x = todo.pop()
        out.append(x)
        todo.extend(children.get(x, []))
    return out


def _cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_cpu_vllm_end_to_end(slurm_cluster, tmp_path):
    python = require_vllm()
    models = cpu_models(tmp_path / "models", python)
    ref = tmp_path / "cpu-vllm-test.yaml"
    ref.write_text(
        "extends: cpu-vllm\nname: cpu-vllm-test\ncluster:\n"
        f"  workdir: {tmp_path}/work\n  python: {python}\n  mem: 4G\n"
        f"  setup: ['export PATH={Path(sys.executable).parent}:$PATH']\n"
        f"servers:\n  tiny: {{model: {models}/tiny-llama}}\n  embeddings: {{model: {models}/all-MiniLM-L6-v2}}\n"
    )
    profile = load_profile(ref)
    events: list[str] = []
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            t0 = time.monotonic()
            res = up(fleet, profile_ref=str(ref), timeout=420, poll=1.0, on_event=events.append)
            startup = time.monotonic() - t0
            print(f"\nsbatch -> all 3 vLLM servers READY: {startup:.1f}s")
            st = res.status
            assert all(s.state == ServerState.READY for s in st.servers), "\n".join(events)
            # status shows vLLM's own queue and KV-cache figures, read from its /metrics
            for s in st.servers:
                assert s.running is not None and s.waiting is not None and s.kv_cache_usage is not None, s

            token = Path(fleet.paths.token).read_text().strip()
            url = st.proxy.url
            auth = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/health", headers=auth).status_code != 200:
                assert time.monotonic() < deadline, "proxy never saw every model healthy"
                time.sleep(0.5)

            from openai import OpenAI

            client = OpenAI(base_url=f"{url}/v1", api_key=token, timeout=120)
            chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=8)
            assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
            pieces = list(client.chat.completions.create(model="tiny", stream=True, max_tokens=8,
                                                         messages=[{"role": "user", "content": "hi"}]))
            assert len(pieces) >= 2
            text = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=8)
            assert text.choices[0].text is not None
            emb = client.embeddings.create(model="embeddings", input=[
                "single cell RNA sequencing of tumour samples", "single cell RNA sequencing of tumour samples",
                "the stock market closed higher on friday"])
            v = [d.embedding for d in emb.data]
            assert len(v[0]) == 384
            assert abs(math.sqrt(sum(x * x for x in v[0])) - 1.0) < 1e-3
            assert _cosine(v[0], v[1]) > 0.999
            assert _cosine(v[0], v[2]) < 0.9

            # the servers themselves refuse requests without the backend key
            rec = json.loads(next(Path(fleet.paths.registry).glob("tiny-0.*.json")).read_text())
            assert httpx.get(f"{rec['url']}/v1/models").status_code == 401

            # failover: kill one replica's vLLM; requests keep succeeding on the other
            # (once the proxy has admitted both: status probes the servers itself, the proxy on its own clock)
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health", headers=auth).json()["models"]["tiny"]["healthy"] != 2:
                assert time.monotonic() < deadline, "the proxy never admitted both tiny replicas"
                time.sleep(0.2)
            for pid in _tree(rec["pid"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ok = 0
            for _ in range(10):
                r = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60,
                               json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4})
                assert r.status_code == 200, r.text
                assert "@tiny-1@" in r.headers["x-biofleet-route"] or "tiny-1" in r.headers["x-biofleet-route"]
                ok += 1
            assert ok == 10
            # the job restarts the dead replica in place (no trip through the queue), and it rejoins
            t1 = time.monotonic()
            deadline = t1 + 240
            while True:
                tiny0 = next(s for s in collect_status(fleet).servers if s.name == "tiny-0")
                if tiny0.state == ServerState.READY and tiny0.restarts == 1:
                    break
                assert tiny0.state not in NEEDS_RESUBMIT, tiny0
                assert time.monotonic() < deadline, f"the killed replica was not restarted in place: {tiny0}"
                time.sleep(1)
            print(f"replica restarted in place, READY again in {time.monotonic() - t1:.1f}s")
            assert tiny0.last_exit is not None and tiny0.last_exit != 0
            new_rec = json.loads(next(Path(fleet.paths.registry).glob("tiny-0.*.json")).read_text())
            assert new_rec["pid"] != rec["pid"] and new_rec["job_id"] == rec["job_id"]
            res2 = up(fleet, profile_ref=str(ref), timeout=300, poll=1.0)
            assert res2.submitted == []
            assert all(s.state == ServerState.READY for s in res2.status.servers)
        finally:
            down(fleet)
    deadline = time.monotonic() + 30
    while vllm_processes(str(tmp_path)):
        assert time.monotonic() < deadline, "vLLM processes left after down"
        time.sleep(0.5)
