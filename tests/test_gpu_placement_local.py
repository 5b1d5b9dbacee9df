"""GPU placement on the local backend and inside Apptainer, read from the processes themselves.

The local backend grants GPUs as SLURM does (CUDA_VISIBLE_DEVICES with indices no other local
task holds), so the same job script places each server on its planned device. Apptainer is not
installable here: a stand-in ``apptainer`` on PATH records the environment the real one would
receive (``apptainer exec --nv`` passes it into the container; ``APPTAINERENV_*`` survives
``--cleanenv``) and then runs the mock engine in place of vLLM.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

from biofleet.backends.local import LOCAL_GPUS_ENV
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile
from biofleet.registry import read_records

PROFILE = """\
extends: h100x2
name: {name}
cluster:
  workdir: {workdir}
  bind_host: 127.0.0.1
  advertise: loopback
  hf_home: null
  setup: ["export PATH={bindir}:$PATH"]
{extra}"""

STAND_IN = """\
#!/usr/bin/env python3
# Stand-in for `apptainer exec [--nv] [--bind DIR]... IMAGE CMD...`: record the environment
# apptainer would get, then serve the model with biofleet's mock engine instead of vLLM.
import json, os, sys
args = sys.argv[1:]
assert args[0] == "exec", args
i = 1
while args[i].startswith("--"):
    i += 2 if args[i] == "--bind" else 1
image, cmd = args[i], args[i + 1:]
with open(os.path.join({record_dir!r}, "%d.json" % os.getpid()), "w") as fh:
    json.dump({{"env": dict(os.environ), "image": image, "cmd": cmd}}, fh)
port = cmd[cmd.index("--port") + 1]
names = cmd[cmd.index("--served-model-name") + 1:cmd.index("--host")]
os.execvp(sys.executable, [sys.executable, "-m", "biofleet.devtools.mock_engine", "--host", "127.0.0.1",
                           "--port", port, "--served-model-name", *names])
"""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def _make(tmp_path: Path, name: str, extra: str = "", engine_mock: bool = True):
    ref = tmp_path / f"{name}.yaml"
    ref.write_text(PROFILE.format(name=name, workdir=tmp_path / "work", bindir=Path(sys.executable).parent, extra=extra))
    p = load_profile(ref)
    if engine_mock:
        p = p.model_copy(update={"servers": {k: s.model_copy(update={"engine": "mock"}) for k, s in p.servers.items()}})
    return ref, p


def test_local_backend_places_each_server_on_its_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCAL_GPUS_ENV, raising=False)
    ref, profile = _make(tmp_path, "h100x2-local")
    with open_fleet(profile, backend="local") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), proxy_mode="none", timeout=60, poll=0.3)
            assert all(s.state == ServerState.READY for s in res.status.servers), res.status.servers
            records = read_records(Path(fleet.paths.registry))
            got = {r.server: environ(r.pid).get("CUDA_VISIBLE_DEVICES") for r in records}
            assert got == {f"{m}-{g}": str(g) for m in ("coder", "orchestrator", "math", "bio") for g in (0, 1)}
            # the four servers of a GPU start one after another, each once the one before answers /health (vLLM
            # sizes its KV cache from the memory in use: two profiling at once read each other's as their own);
            # the two GPUs start side by side
            starts = {g: sorted(r.started_at for r in records if got[r.server] == str(g)) for g in (0, 1)}
            for g, times in starts.items():
                assert all(b - a >= 0.2 for a, b in itertools.pairwise(times)), (g, times)
            assert starts[1][0] < starts[0][-1] and starts[0][0] < starts[1][-1], starts
        finally:
            down(fleet)


def test_local_backend_short_allocation_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCAL_GPUS_ENV, "1")  # this "machine" has one GPU; the plan needs two
    ref, profile = _make(tmp_path, "h100x2-short")
    with open_fleet(profile, backend="local") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), proxy_mode="none", timeout=30, poll=0.3)
            assert not res.timed_out
            for s in res.status.servers:
                assert s.state in (ServerState.FAILED, ServerState.GONE) and "granted 1 GPU(s)" in (s.reason or ""), s
        finally:
            down(fleet)


def test_apptainer_gets_the_servers_devices(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCAL_GPUS_ENV, raising=False)
    bindir, records = tmp_path / "bin", tmp_path / "apptainer-records"
    bindir.mkdir()
    records.mkdir()
    stand_in = bindir / "apptainer"
    stand_in.write_text(STAND_IN.format(record_dir=str(records)))
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    ref, profile = _make(tmp_path, "h100x2-sif", extra="  container: /images/vllm.sif\n", engine_mock=False)
    with open_fleet(profile, backend="local") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), proxy_mode="none", timeout=60, poll=0.3)
            assert all(s.state == ServerState.READY for s in res.status.servers), res.status.servers
            seen = {}
            for rec in read_records(Path(fleet.paths.registry)):
                data = json.loads((records / f"{rec.pid}.json").read_text())
                assert data["image"] == "/images/vllm.sif" and data["cmd"][:3] == ["python3", "-m",
                                                                                  "vllm.entrypoints.openai.api_server"]
                env = data["env"]
                assert env["CUDA_VISIBLE_DEVICES"] == env["APPTAINERENV_CUDA_VISIBLE_DEVICES"]
                seen[rec.server] = env["CUDA_VISIBLE_DEVICES"]
            assert seen == {f"{m}-{g}": str(g) for m in ("coder", "orchestrator", "math", "bio") for g in (0, 1)}
            assert {s.name: s.devices for s in collect_status(fleet, probe=False).servers}["math-1"] == "1"
        finally:
            down(fleet)
