"""The SLURM output parsers, on output recorded from a real SLURM 22.05 (tests/data/slurm) and edge cases."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from biofleet.backends.base import TERMINAL, JobState
from biofleet.backends.slurm import (
    expand_array_tasks,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
    parse_state,
    split_job_id,
)

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


# ---------------------------------------------------------------------------- sbatch


def test_sbatch_recorded():
    assert parse_sbatch(read("sbatch_parsable.txt")) == "12"


@pytest.mark.parametrize(
    "text, expected",
    [("123\n", "123"), ("123;cluster-a\n", "123"), ("sbatch: warning: something\n456\n", "456"), ("  77  ", "77")],
)
def test_sbatch_forms(text, expected):
    assert parse_sbatch(text) == expected


@pytest.mark.parametrize("text", ["", "Submitted batch job\n", "abc;def"])
def test_sbatch_without_id(text):
    with pytest.raises(ValueError, match="no job id"):
        parse_sbatch(text)


# ---------------------------------------------------------------------------- squeue


def test_squeue_recorded_mixed():
    jobs = parse_squeue(read("squeue_mixed.txt"))
    # A running job with a time limit; its name contains the field separator.
    j = jobs["13"]
    assert j.state is JobState.RUNNING
    assert j.name == "with limit|pipe"
    assert (j.nodes, j.partition) == ("cpu-01", "cpuspot")
    assert (j.time_used, j.time_left, j.time_limit) == ("0:01", "9:59", "10:00")
    assert j.start_time == "2026-11-24T19:40:47"
    assert j.array_job_id is None and j.array_task_id is None and j.reason is None
    # Running array tasks: one entry each, ids as users see them.
    t3 = jobs["2_3"]
    assert (t3.state, t3.nodes, t3.array_job_id, t3.array_task_id) == (JobState.RUNNING, "t4-01", "2", 3)
    # The pending range "2_[6-14%3]" is expanded into one PENDING entry per task.
    for t in range(6, 15):
        info = jobs[f"2_{t}"]
        assert info.state is JobState.PENDING
        assert info.reason == "JobArrayTaskLimit"
        assert info.nodes is None and info.start_time is None
        assert (info.array_job_id, info.array_task_id) == ("2", t)
    assert "2_[6-14%3]" not in jobs
    assert len(jobs) == 2 + 9 + 3


def test_squeue_recorded_finished():
    jobs = parse_squeue(read("squeue_finished.txt"))
    # Ended jobs stay visible (with --states=all) for MinJobAge seconds, with their final state.
    assert jobs["14"].state is JobState.CANCELLED and jobs["14"].name == "cancel me"
    assert jobs["13"].state is JobState.COMPLETED
    # Waiting for GPUs: a reason, no node, an expected start time, a 30 min limit.
    w = jobs["3"]
    assert (w.state, w.reason, w.nodes, w.time_limit) == (JobState.PENDING, "Resources", None, "30:00")
    assert w.start_time == "2027-11-24T19:44:24"
    assert jobs["2"].state is JobState.RUNNING and jobs["2"].nodes == "h100-01"
    assert {k for k, v in jobs.items() if v.array_job_id == "1"} == {f"1_{t}" for t in range(8)}
    failed = parse_squeue(read("squeue_failed.txt"))["12"]
    assert (failed.state, failed.reason) == (JobState.FAILED, "NonZeroExitCode")
    assert failed.is_terminal


def test_squeue_recorded_array_running():
    jobs = parse_squeue(read("squeue_array_running.txt"))
    assert {k for k, v in jobs.items() if v.state is JobState.PENDING} == {f"2_{t}" for t in range(6, 15)}
    assert jobs["13"].name == "with limit|pipe"


def test_short_codes_recorded():
    # %t (short) and %T (long) columns of the same squeue call must agree.
    for line in read("squeue_short_codes.txt").splitlines():
        _id, short, long, _reason = line.split("|")
        assert parse_state(short) is parse_state(long)


def test_squeue_edge_cases():
    text = (
        "20956421_[2-4%25]|20956421|20956421|2-4%25|PENDING|Priority||t4flex|0:00|1:00:00|1:00:00|N/A|arr\n"
        "77|77|77|N/A|PENDING|Resources||h100flex|0:00|UNLIMITED|UNLIMITED|2026-01-01T10:00:00|big\n"
        "\n"
        "garbage line\n"
        "78|78|78|N/A|WEIRD_NEW_STATE|None|cpu-01|cpuspot|0:01|UNLIMITED|UNLIMITED|N/A|x\n"
    )
    with pytest.warns(UserWarning, match="WEIRD_NEW_STATE"):
        jobs = parse_squeue(text)
    assert sorted(jobs) == ["20956421_2", "20956421_3", "20956421_4", "77", "78"]
    assert jobs["20956421_4"].time_limit == "1:00:00"
    assert jobs["77"].reason == "Resources" and jobs["77"].start_time == "2026-01-01T10:00:00"
    assert jobs["78"].state is JobState.UNKNOWN and jobs["78"].raw_state == "WEIRD_NEW_STATE"


def test_squeue_empty():
    assert parse_squeue("") == {}


# ---------------------------------------------------------------------------- sacct
# Recorded from the test cluster's real accounting (slurmdbd + MariaDB), with the argv of
# Slurm.accounting(); tests/data/slurm/README.md says how each job was made.


def test_sacct_recorded_completed():
    jobs = parse_sacct(read("sacct_completed.txt"))
    # The allocation row only: "2.batch" and the srun step "2.0" are skipped.
    assert list(jobs) == ["2"]
    j = jobs["2"]
    assert (j.state, j.exit_code, j.name, j.nodes, j.source) == (JobState.COMPLETED, "0:0", "done", "cpu-01", "sacct")
    assert (j.time_used, j.start_time, j.end_time) == ("00:00:00", "2026-11-27T06:55:11", "2026-11-27T06:55:11")


def test_sacct_recorded_failed():
    j = parse_sacct(read("sacct_failed.txt"))["3"]
    assert (j.state, j.exit_code, j.raw_state) == (JobState.FAILED, "3:0", "FAILED")
    assert j.is_terminal


def test_sacct_recorded_cancelled():
    jobs = parse_sacct(read("sacct_cancelled.txt"))
    running = jobs["5"]
    # The allocation says who cancelled it and exit 0:0; only its batch step carries signal 15.
    assert (running.state, running.raw_state, running.exit_code) == (JobState.CANCELLED, "CANCELLED by 0", "0:0")
    assert running.nodes == "cpu-01"
    # Cancelled while held: never ran, so no node ("None assigned") and no start time ("None").
    held = jobs["6"]
    assert (held.state, held.nodes, held.start_time) == (JobState.CANCELLED, None, None)
    assert held.end_time == "2026-11-27T06:55:14"


def test_sacct_recorded_array_mixed():
    jobs = parse_sacct(read("sacct_array_mixed.txt"))
    assert sorted(jobs) == [f"7_{t}" for t in range(6)]
    states = {k: (v.state, v.exit_code) for k, v in jobs.items()}
    assert states["7_0"] == (JobState.COMPLETED, "0:0")
    assert states["7_1"] == (JobState.FAILED, "3:0")
    assert states["7_2"] == states["7_3"] == (JobState.CANCELLED, "0:0")
    # "7_[4-5%2]": tasks cancelled while still pending share one row, expanded per task.
    for t in (4, 5):
        info = jobs[f"7_{t}"]
        assert (info.state, info.nodes, info.start_time) == (JobState.CANCELLED, None, None)
        assert (info.array_job_id, info.array_task_id) == ("7", t)
    assert all(v.array_job_id == "7" for v in jobs.values())
    # Asking for one task by its id answers with that task only.
    one = parse_sacct(read("sacct_array_task.txt"))
    assert list(one) == ["7_1"] and one["7_1"].state is JobState.FAILED and one["7_1"].array_task_id == 1


def test_sacct_recorded_active():
    # While jobs are still queued sacct knows them too: running, held (pending) and a pending array range.
    jobs = parse_sacct(read("sacct_active.txt"))
    assert jobs["1"].state is JobState.RUNNING and jobs["1"].end_time is None
    assert (jobs["6"].state, jobs["6"].nodes, jobs["6"].start_time) == (JobState.PENDING, None, None)
    assert jobs["7_2"].state is JobState.RUNNING and jobs["7_2"].nodes == "t4-01"
    assert [jobs[f"7_{t}"].state for t in (4, 5)] == [JobState.PENDING, JobState.PENDING]
    assert len(jobs) == 3 + 6


def test_sacct_recorded_name_with_pipe():
    j = parse_sacct(read("sacct_name_pipe.txt"))["4"]
    assert j.name == "name|with|pipe"
    assert (j.state, j.nodes, j.exit_code) == (JobState.COMPLETED, "t4-01", "0:0")


def test_sacct_recorded_timeout():
    j = parse_sacct(read("sacct_timeout.txt"))["1"]
    # Killed at its 1 minute limit (SLURM checks limits every ~30 s, hence 1:27); its batch step reads CANCELLED.
    assert (j.state, j.exit_code, j.time_used) == (JobState.TIMEOUT, "0:0", "00:01:27")


def test_sacct_edge_cases():
    # States and ids the test cluster cannot produce cheaply, in the recorded --parsable2 layout.
    text = (
        "104|big|OUT_OF_MEMORY|0:125|h100-01|00:10:00|2026-11-24T10:02:00|2026-11-24T10:12:00\n"
        "106|srv|RUNNING|0:0|t4-04|00:00:09|2026-11-24T10:03:00|Unknown\n"
        "106.0|python3|RUNNING+|0:0|t4-04|00:00:09|2026-11-24T10:03:00|Unknown\n"
        "108+0|het|COMPLETED|0:0|cpu-01|00:00:01|2026-11-24T10:03:00|2026-11-24T10:03:01\n"
        "garbage\n"
    )
    jobs = parse_sacct(text)
    assert jobs["104"].state is JobState.OUT_OF_MEMORY and jobs["104"].exit_code == "0:125"
    assert jobs["106"].state is JobState.RUNNING and jobs["106"].end_time is None
    assert sorted(jobs) == ["104", "106", "108+0"]


def test_sacct_step_only_and_empty():
    assert parse_sacct("") == {}
    assert parse_sacct("7.batch|batch|COMPLETED|0:0|t4-01|00:00:01|x|y\n") == {}


# ---------------------------------------------------------------------------- ids and states


@pytest.mark.parametrize(
    "spec, tasks",
    [
        ("2-4%25", [2, 3, 4]),
        ("[2-4%25]", [2, 3, 4]),
        ("5", [5]),
        ("1,3,5-7", [1, 3, 5, 6, 7]),
        ("0-10:5", [0, 5, 10]),
        ("[1-2,9]%1", [1, 2, 9]),
    ],
)
def test_expand_array_tasks(spec, tasks):
    assert expand_array_tasks(spec) == tasks


def test_split_job_id():
    assert split_job_id("20956421_[2-4%25]") == ("20956421", "[2-4%25]", None)
    assert split_job_id("123_4.batch") == ("123", "4", "batch")
    assert split_job_id("123") == ("123", None, None)
    for bad in ("", "abc", "12;rm -rf /", "--name=x"):
        with pytest.raises(ValueError):
            split_job_id(bad)


@pytest.mark.parametrize(
    "text, state",
    [
        ("PD", JobState.PENDING), ("R", JobState.RUNNING), ("CG", JobState.COMPLETING),
        ("CD", JobState.COMPLETED), ("F", JobState.FAILED), ("CA", JobState.CANCELLED),
        ("TO", JobState.TIMEOUT), ("NF", JobState.NODE_FAIL), ("PR", JobState.PREEMPTED),
        ("OOM", JobState.OUT_OF_MEMORY), ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED by 1234", JobState.CANCELLED), ("RUNNING+", JobState.RUNNING),
        (" configuring ", JobState.CONFIGURING), ("BOOT_FAIL", JobState.BOOT_FAIL),
        ("DEADLINE", JobState.DEADLINE), ("SUSPENDED", JobState.SUSPENDED), ("REQUEUED", JobState.REQUEUED),
    ],
)
def test_parse_state(text, state):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_state(text) is state


def test_unknown_state_warns():
    with pytest.warns(UserWarning, match="unknown SLURM job state 'FROBNICATED'"):
        assert parse_state("FROBNICATED") is JobState.UNKNOWN


def test_terminal_set():
    assert JobState.COMPLETED in TERMINAL and JobState.OUT_OF_MEMORY in TERMINAL
    assert not JobState.COMPLETING.is_terminal
    assert not JobState.UNKNOWN.is_terminal
    assert JobState.RUNNING.is_active and not JobState.FAILED.is_active


@pytest.mark.parametrize("text,seconds", [("2:59", 179), ("1:02:03", 3723), ("1-02:03:04", 93784), ("5-00", 432000),
                                          ("0:00", 0), ("UNLIMITED", None), ("INVALID", None), ("NOT_SET", None),
                                          (None, None), ("", None)])
def test_parse_duration(text, seconds):
    from biofleet.backends.slurm import parse_duration

    assert parse_duration(text) == seconds
