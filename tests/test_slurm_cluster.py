"""The scheduler layer against a real SLURM (the throwaway test cluster from conftest)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from biofleet.slurm.runner import CompletedCommand, LocalRunner
from biofleet.slurm.scheduler import Slurm
from biofleet.slurm.states import JobState

pytestmark = pytest.mark.slurm


class CountingRunner(LocalRunner):
    """LocalRunner that records every argv, to check how many SLURM calls a method makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv, **kw) -> CompletedCommand:
        self.calls.append(tuple(argv))
        return super().run(argv, **kw)


@pytest.fixture
def slurm(slurm_cluster):
    return Slurm(LocalRunner())


@pytest.fixture
def jobdir(tmp_path):
    return tmp_path


def script(d: Path, name: str, body: str) -> str:
    p = d / f"{name}.sh"
    p.write_text("#!/bin/bash\n" + body + "\n")
    return str(p)


def wait_for(pred, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_cluster_is_up(slurm_cluster):
    assert slurm_cluster.is_up()
    states = slurm_cluster.node_states()
    assert len(states) == 15
    assert {"t4-01", "t4-10", "h100-01", "l4x4-01", "t4x4-01", "cpu-01", "cpu-02"} <= states.keys()


def test_gpu_job_runs_with_cuda_visible_devices(slurm, jobdir):
    out = jobdir / "gpu.out"
    path = script(jobdir, "gpu", 'echo "node=$SLURMD_NODENAME cuda=${CUDA_VISIBLE_DEVICES:-unset}"\nsleep 300')
    job = slurm.submit(path, extra_args=["-p", "t4flex", "--gres=gpu:t4:1", "-J", "bf-gpu", f"--output={out}"])
    assert job.isdigit()
    try:
        info = wait_for(lambda: (i := slurm.queue([job]).get(job)) and i.state is JobState.RUNNING and i,
                        what="RUNNING")
        assert info.nodes and info.nodes.startswith("t4-")
        assert info.partition == "t4flex" and info.name == "bf-gpu"
        assert info.start_time and info.time_used
        text = wait_for(lambda: out.exists() and out.read_text(), what="job output")
        assert f"node={info.nodes}" in text
        assert "cuda=0" in text
    finally:
        slurm.cancel([job])
    final = slurm.wait_gone([job], timeout=20)
    assert job not in final or final[job].state is JobState.CANCELLED


def test_h100_job_gets_four_gpus(slurm, jobdir):
    out = jobdir / "h100.out"
    path = script(jobdir, "h100", 'echo "cuda=$CUDA_VISIBLE_DEVICES"')
    job = slurm.submit(path, extra_args=["-p", "h100flex", "--gres=gpu:h100:4", f"--output={out}"])
    slurm.wait_gone([job], timeout=20)
    assert wait_for(lambda: out.exists() and out.read_text(), what="output").strip() == "cuda=0,1,2,3"


def test_array_job_and_batched_queue(slurm_cluster, jobdir):
    runner = CountingRunner()
    slurm = Slurm(runner)
    path = script(jobdir, "arr", "sleep 300")
    arr = slurm.submit(path, extra_args=["-p", "t4flex", "--gres=gpu:t4:1", "--array=0-5%2", "-o", "/dev/null"])
    single = slurm.submit(path, extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    try:
        def two_running():
            jobs = slurm.queue([arr, single])
            running = [k for k, v in jobs.items() if v.array_job_id == arr and v.state is JobState.RUNNING]
            return jobs if len(running) == 2 and single in jobs else None

        runner.calls.clear()
        jobs = wait_for(two_running, what="two array tasks running")
        # Every poll is exactly one squeue call, whatever the number of jobs.
        assert all(c[0] == "squeue" for c in runner.calls)
        assert all(any(a == f"--jobs={arr},{single}" for a in c) for c in runner.calls)
        tasks = {k: v for k, v in jobs.items() if v.array_job_id == arr}
        assert sorted(tasks) == [f"{arr}_{t}" for t in range(6)]
        assert sorted(v.array_task_id for v in tasks.values()) == list(range(6))
        pending = [v for v in tasks.values() if v.state is JobState.PENDING]
        assert len(pending) == 4 and all(v.reason == "JobArrayTaskLimit" for v in pending)
        # A single task can be asked for by its own id, even while it is pending in a range.
        one = slurm.queue([f"{arr}_5"])
        assert list(one) == [f"{arr}_5"]
    finally:
        slurm.cancel([arr, single])
    slurm.wait_gone([arr, single], timeout=20)


def test_cancel_by_id_spares_same_named_job(slurm, jobdir):
    path = script(jobdir, "twin", "sleep 300")
    args = ["-p", "cpuspot", "-J", "same-name", "-o", "/dev/null"]
    a = slurm.submit(path, extra_args=args)
    b = slurm.submit(path, extra_args=args)
    try:
        wait_for(lambda: all(i.state is JobState.RUNNING for i in slurm.queue([a, b]).values())
                 and len(slurm.queue([a, b])) == 2, what="both running")
        slurm.cancel([a])
        slurm.wait_gone([a], timeout=20)
        time.sleep(0.5)
        survivor = slurm.queue([b])[b]
        assert survivor.state is JobState.RUNNING and survivor.name == "same-name"
        # Cancelling a job that already ended is not an error.
        slurm.cancel([a])
    finally:
        slurm.cancel([a, b])
    slurm.wait_gone([a, b], timeout=20)


def test_unknown_job_is_absent(slurm):
    assert slurm.queue(["999999"]) == {}
    assert slurm.states(["999999"]) == {}
    slurm.cancel(["999999"])  # not an error


def test_accounting_disabled_returns_empty(slurm, jobdir):
    job = slurm.submit(script(jobdir, "quick", "true"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    slurm.wait_gone([job], timeout=20)
    # The test cluster has AccountingStorageType=accounting_storage/none: sacct fails, we get {}.
    assert slurm.accounting([job]) == {}


def test_failing_job_is_failed_or_gone(slurm, jobdir):
    job = slurm.submit(script(jobdir, "fail", "echo bye; exit 1"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    final = slurm.wait_gone([job], timeout=20)
    if job in final:
        assert final[job].state is JobState.FAILED
        assert final[job].reason == "NonZeroExitCode"
    states = slurm.states([job])
    assert job not in states or states[job].state is JobState.FAILED


def test_wait_gone_times_out_on_running_job(slurm, jobdir):
    job = slurm.submit(script(jobdir, "long", "sleep 300"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    try:
        with pytest.raises(TimeoutError, match=job):
            slurm.wait_gone([job], timeout=0.5)
    finally:
        slurm.cancel([job])
    slurm.wait_gone([job], timeout=20)


def test_bad_submission_raises_command_error(slurm, jobdir):
    from biofleet.slurm.runner import CommandError

    with pytest.raises(CommandError) as err:
        slurm.submit(script(jobdir, "x", "true"), extra_args=["-p", "no-such-partition"])
    assert err.value.returncode == 1
    assert "invalid partition" in str(err.value).lower()
    assert "sbatch" in err.value.argv


def test_scancel_refuses_non_ids(slurm):
    with pytest.raises(ValueError):
        slurm.cancel(["--name=same-name"])
