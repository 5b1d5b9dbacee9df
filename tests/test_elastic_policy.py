"""The elastic decision, pure: hand-made situations in, actions out; and the load window."""

from __future__ import annotations

import pytest

from biofleet.elastic.policy import LoadWindow, ReplicaView, ScalingPolicy, Situation, decide

POLICY = ScalingPolicy(target=2, scale_up_after_s=5, idle_s=60, cold_start_s=120, poll_s=1)
NOW = 10_000.0


def sit(**kw) -> Situation:
    base = dict(server="coder", policy=POLICY, min=0, max=4, now=NOW, watched_s=1_000)
    base.update(kw)
    return Situation(**base)


def kinds(actions) -> list[tuple[str, str | None, int]]:
    return [(a.kind, a.replica, a.count) for a in actions]


def ready(i: int, inflight: int = 0, since: float = NOW - 500) -> ReplicaView:
    return ReplicaView(f"r{i}", "ready", since, inflight)


def starting(i: int, since: float = NOW - 10) -> ReplicaView:
    return ReplicaView(f"s{i}", "starting", since)


def draining(i: int, inflight: int = 0) -> ReplicaView:
    return ReplicaView(f"d{i}", "draining", NOW - 5, inflight)


def test_nothing_to_do_at_zero_without_requests():
    assert decide(sit(peak=0)) == []


def test_first_held_request_starts_one_replica():
    acts = decide(sit(held=1, load=1))
    assert kinds(acts) == [("submit", None, 1)]
    assert "1 request(s) held and no replica" in acts[0].reason


def test_held_requests_start_what_they_need_up_to_max():
    assert kinds(decide(sit(held=5, load=5))) == [("submit", None, 3)]  # ceil(5 / 2)
    assert kinds(decide(sit(held=50, load=50))) == [("submit", None, 4)]  # max 4


def test_held_requests_wait_for_the_replica_already_starting():
    assert decide(sit(held=2, load=2, replicas=(starting(0),))) == []


def test_min_is_kept_and_never_more_than_max():
    assert kinds(decide(sit(min=2, peak=0))) == [("submit", None, 2)]
    assert kinds(decide(sit(min=2, replicas=(ready(0),)))) == [("submit", None, 1)]
    assert decide(sit(min=2, max=2, held=30, load=30, replicas=(ready(0), starting(1)))) == []


def test_a_draining_replica_is_taken_back_before_a_new_one_is_submitted():
    acts = decide(sit(held=1, load=1, replicas=(draining(0),)))
    assert kinds(acts) == [("undrain", "d0", 1)]


def test_no_submission_during_a_failure_back_off():
    assert decide(sit(held=3, load=3, backoff_until=NOW + 30)) == []
    assert kinds(decide(sit(held=3, load=3, backoff_until=NOW - 1))) == [("submit", None, 2)]


def test_scale_up_needs_load_above_target_for_scale_up_after_s():
    reps = (ready(0, inflight=6),)
    assert decide(sit(replicas=reps, load=6, high_since=NOW - 2, peak=6)) == []  # not yet 5 s
    acts = decide(sit(replicas=reps, load=6, high_since=NOW - 5, peak=6))
    assert kinds(acts) == [("submit", None, 2)]  # ceil(6 / 2) = 3, one ready
    assert "load 6.0 per ready replica above target 2" in acts[0].reason
    # replicas on their way count: no second submission for the same load
    assert decide(sit(replicas=(*reps, starting(1), starting(2)), load=6, high_since=NOW - 9, peak=6)) == []


def test_scale_up_stops_at_max():
    reps = tuple(ready(i, inflight=10) for i in range(4))
    assert decide(sit(replicas=reps, load=40, high_since=NOW - 60, peak=40)) == []


def test_draining_replica_is_cancelled_once_its_requests_are_done():
    assert decide(sit(replicas=(ready(0), draining(1, inflight=2)), peak=1)) == []
    assert kinds(decide(sit(replicas=(ready(0), draining(1)), peak=1))) == [("cancel", "d1", 1)]


def test_idle_replica_is_drained_to_zero():
    acts = decide(sit(replicas=(ready(0),), peak=0))
    assert kinds(acts) == [("drain", "r0", 1)]
    assert "no request for 60s" in acts[0].reason


def test_scale_down_waits_until_the_load_was_watched_for_idle_s():
    # a restarted controller knows no past: it must not release replicas it has not watched idle
    assert decide(sit(replicas=(ready(0),), peak=0, watched_s=59)) == []


def test_scale_down_keeps_what_the_peak_needs_and_min():
    reps = tuple(ready(i, inflight=1 if i == 0 else 0, since=NOW - 100 - i) for i in range(4))
    acts = decide(sit(replicas=reps, peak=3, load=1))  # ceil(3 / 2) = 2 needed
    # the idle ones, the newest first (r1 became ready after r2, r2 after r3)
    assert sorted(a.replica for a in acts if a.kind == "drain") == ["r1", "r2"]
    assert [a.kind for a in decide(sit(min=3, replicas=reps, peak=0))] == ["drain"]


def test_never_the_last_replica_while_requests_are_held():
    assert decide(sit(replicas=(ready(0),), held=1, load=1, peak=0)) == []


def test_stale_starting_replica_is_cancelled_when_nothing_needs_it():
    old = starting(0, since=NOW - 61)
    acts = decide(sit(replicas=(old,), peak=0))
    assert kinds(acts) == [("cancel", "s0", 1)]
    assert decide(sit(replicas=(starting(0, since=NOW - 30),), peak=0)) == []  # give it idle_s
    # a young starting replica is kept, and the ready one is not drained in its place
    assert decide(sit(replicas=(ready(0), starting(1, since=NOW - 30)), peak=1)) == []


def test_load_window_peak_and_high_since():
    w = LoadWindow(started=0.0)
    w.observe(10.0, concurrency=5, load=5, ready=1, target=2, idle_s=60)
    assert w.high_since == 10.0
    w.observe(11.0, concurrency=5, load=5, ready=1, target=2, idle_s=60)
    assert w.high_since == 10.0  # stays the start of the high stretch
    w.observe(12.0, concurrency=1, load=1, ready=1, target=2, idle_s=60)
    assert w.high_since is None
    w.observe(13.0, concurrency=3, load=3, ready=0, target=2, idle_s=60)
    assert w.high_since is None  # no ready replica: held requests drive the floor, not this clock
    assert w.peak(13.0, idle_s=60) == 5
    assert w.peak(72.5, idle_s=60) == 3  # the 5s (seconds 10 and 11) fell out of the window
    w.arrival(100.0, idle_s=60)
    assert w.peak(100.0, idle_s=60) == 1  # a request shorter than a sample still counts
    assert w.peak(200.0, idle_s=60) == 0
    assert w.watched(200.0) == 200.0


def test_load_window_is_bounded():
    w = LoadWindow(started=0.0)
    for t in range(0, 10_000):
        w.observe(float(t), 1, 1, 1, 2, idle_s=30)
    assert len(w._buckets) <= 32


@pytest.mark.parametrize("bad", [{"min": 3, "max": 2}, {"min": -1, "max": 2}, {"max": 0}])
def test_replica_range_rejects(bad):
    from pydantic import ValidationError

    from biofleet.elastic.policy import ReplicaRange

    with pytest.raises(ValidationError):
        ReplicaRange(**bad)
