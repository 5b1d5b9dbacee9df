"""Every server runs on the GPU(s) its plan gives it — checked in the processes themselves.

On the real test SLURM (fake GPUs are character devices, so jobs get a real
CUDA_VISIBLE_DEVICES from slurmd), each server's registered pid is looked up in /proc
and its environment compared with the plan: the i-th entry of what the job was granted.
The job script's own environment (the server's parent) says what the job was granted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from biofleet.backends.slurm import Slurm
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile
from biofleet.registry import read_records
from biofleet.remote.local import LocalRunner

pytestmark = pytest.mark.slurm

OVERRIDES = """\
extends: {base}
name: {name}
cluster:
  workdir: {workdir}
  setup: ["export PATH={bindir}:$PATH"]
  hf_home: null
  bind_host: 127.0.0.1
  advertise: loopback
  time: "00:20:00"
  cpus_per_task: 1
  mem: 100M
{extra}"""


def make_profile(tmp_path: Path, base: str, name: str, extra: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(OVERRIDES.format(base=base, name=name, workdir=tmp_path / "work",
                                  bindir=Path(sys.executable).parent, extra=extra))
    return p


def as_mock(profile):
    return profile.model_copy(update={"servers": {k: s.model_copy(update={"engine": "mock"})
                                                  for k, s in profile.servers.items()}})


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def placement(fleet) -> dict[str, tuple[str, str]]:
    """server name -> (its CUDA_VISIBLE_DEVICES, its job's CUDA_VISIBLE_DEVICES), read from /proc."""
    out = {}
    for rec in read_records(Path(fleet.paths.registry)):
        assert rec.pid, rec
        out[rec.server] = (environ(rec.pid).get("CUDA_VISIBLE_DEVICES"),
                           environ(parent(rec.pid)).get("CUDA_VISIBLE_DEVICES"))
    return out


def assert_matches_plan(profile, got: dict[str, tuple[str, str]]) -> None:
    for inst in profile.instances():
        mine, granted = got[inst.name]
        assert granted, f"{inst.name}: the job has no CUDA_VISIBLE_DEVICES"
        want = ",".join(granted.split(",")[g] for g in inst.gpus)
        assert mine == want, f"{inst.name}: plan GPUs {inst.gpus} of {granted!r} -> {want!r}, process has {mine!r}"


def _up(fleet, ref, **kw):
    events: list[str] = []
    res = up(fleet, profile_ref=str(ref), proxy_mode="none", poll=0.3, on_event=events.append, **kw)
    return res, events


def test_h100x2_on_a_node_whose_allocation_is_gpus_2_and_3(slurm_cluster, tmp_path):
    """Path C: four servers on each of two H100s. Another job holds GPUs 0,1 of the 4-GPU node, so
    this job is granted 2,3: the GPU-0 servers must get '2', the GPU-1 servers '3'."""
    slurm = Slurm(LocalRunner())
    blocker = tmp_path / "blocker.sbatch"
    blocker.write_text("#!/bin/bash\n#SBATCH --partition=h100flex\n#SBATCH --gres=gpu:h100:2\n"
                       "#SBATCH --mem=10M\n#SBATCH --cpus-per-task=1\n#SBATCH --output=/dev/null\nsleep 600\n")
    blocker_id = slurm.submit(str(blocker))
    ref = make_profile(tmp_path, "h100x2", "h100x2-test", "  partition: h100flex\n")
    profile = as_mock(load_profile(ref))
    try:
        with open_fleet(profile, backend="slurm") as fleet:
            try:
                res, events = _up(fleet, ref, timeout=120)
                assert not res.timed_out and all(s.state == ServerState.READY for s in res.status.servers), events
                got = placement(fleet)
                assert {granted for _, granted in got.values()} == {"2,3"}, got
                assert_matches_plan(profile, got)
                assert {got[n][0] for n in ("coder-0", "orchestrator-0", "math-0", "bio-0")} == {"2"}
                assert {got[n][0] for n in ("coder-1", "orchestrator-1", "math-1", "bio-1")} == {"3"}
                # status shows the devices each server was given
                st = collect_status(fleet, probe=False)
                assert {s.name: s.devices for s in st.servers}["bio-1"] == "3"
            finally:
                down(fleet)
    finally:
        slurm.cancel([blocker_id])


def test_l4x4_t4x4_each_server_on_its_planned_gpu(slurm_cluster, tmp_path):
    """Path B: two 4-GPU nodes (L4 and T4), one or two servers per GPU."""
    ref = make_profile(tmp_path, "l4x4-t4x4", "pathb-test")
    profile = as_mock(load_profile(ref))
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res, events = _up(fleet, ref, timeout=120)
            assert not res.timed_out and all(s.state == ServerState.READY for s in res.status.servers), events
            got = placement(fleet)
            assert len(got) == 13
            assert_matches_plan(profile, got)
            nodes = {s.name: s.node for s in res.status.servers}
            assert nodes["docs"] == "l4x4-01" and nodes["safety"] == "t4x4-01"
            # four distinct devices on each node, and co-located pairs share theirs
            assert len({got[n][0] for n in ("orchestrator", "coder", "math", "docs")}) == 4
            assert got["orchestrator"][0] == got["intent"][0]
            assert got["intent-t4"][0] == got["analysis-t4"][0] != got["bio"][0]
        finally:
            down(fleet)


TP_PROFILE = """\
name: tp-test
cluster:
  partition: h100flex
  workdir: {workdir}
  setup: ["export PATH={bindir}:$PATH"]
  bind_host: 127.0.0.1
  advertise: loopback
  time: "00:20:00"
  cpus_per_task: 1
  mem: 100M
servers:
  big: {{model: Qwen/Qwen2.5-Coder-32B-Instruct, engine: mock, dtype: bfloat16, tensor_parallel_size: 2,
        max_model_len: 8192}}
  small: {{model: Qwen/Qwen2.5-Math-7B-Instruct, engine: mock, dtype: bfloat16, max_model_len: 4096}}
jobs:
  - name: h100
    gpu: H100-80GB
    gpus_per_node: 3
    nodes:
      - gpus: [[big], [], [small]]
{extra}"""


def test_tensor_parallel_server_gets_its_two_devices(slurm_cluster, tmp_path):
    ref = tmp_path / "tp.yaml"
    ref.write_text(TP_PROFILE.format(workdir=tmp_path / "work", bindir=Path(sys.executable).parent, extra=""))
    profile = load_profile(ref)
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res, events = _up(fleet, ref, timeout=90)
            assert all(s.state == ServerState.READY for s in res.status.servers), events
            got = placement(fleet)
            granted = got["big"][1].split(",")
            assert len(granted) == 3
            assert got["big"][0] == f"{granted[0]},{granted[1]}"
            assert got["small"][0] == granted[2]
        finally:
            down(fleet)


def test_a_completing_job_is_not_taken_for_how_it_ended(tmp_path):
    """squeue shows a job COMPLETING (CG) while SLURM tears it down, before it says whether it failed: the short
    allocation's refusal was once reported STOPPED by an `up` that stopped waiting in that moment (a CI run under
    load). The row is STOPPED with the log and `completing`, which `up` does not count as settled."""
    from biofleet.backends.base import JobInfo, JobState
    from biofleet.fleet.status import _fill_row

    ref = tmp_path / "p.yaml"
    ref.write_text(TP_PROFILE.format(workdir=tmp_path / "work", bindir=Path(sys.executable).parent, extra=""))
    with open_fleet(load_profile(ref), backend="local") as fleet:
        row = collect_status(fleet).servers[0]
        for state, shown, completing in ((JobState.COMPLETING, ServerState.STOPPED, True),
                                         (JobState.FAILED, ServerState.FAILED, False),
                                         (JobState.COMPLETED, ServerState.STOPPED, False)):
            _fill_row(fleet, row, JobInfo("7", state), None, 0.0, None, False)
            assert (row.state, row.completing) == (shown, completing), state


def test_short_allocation_fails_at_once_with_the_reason(slurm_cluster, tmp_path):
    """A site default or an sbatch option that grants fewer GPUs than the plan: the job starts nothing,
    fails at once, and status says why (in the reason and in the log tail)."""
    ref = tmp_path / "short.yaml"
    # cluster.sbatch_extra comes after the job's own --gres, and sbatch takes the last one.
    ref.write_text(TP_PROFILE.format(workdir=tmp_path / "work", bindir=Path(sys.executable).parent,
                                     extra="").replace("  mem: 100M\n", "  mem: 100M\n  sbatch_extra: ['--gres=gpu:h100:1']\n"))
    profile = load_profile(ref)
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res, events = _up(fleet, ref, timeout=60)
            assert not res.timed_out, events  # up sees the failure at once, not after its timeout
            for s in res.status.servers:
                assert s.state in (ServerState.FAILED, ServerState.GONE), s
                assert "granted 1 GPU(s)" in (s.reason or ""), s
                assert "places servers on 3" in (s.reason or ""), s
                assert any("granted 1 GPU(s)" in line for line in s.log_tail), s.log_tail
            assert list(Path(fleet.paths.registry).glob("*.json")) == []  # nothing was started
        finally:
            down(fleet)
