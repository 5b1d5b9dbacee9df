"""Elastic servers without SLURM: the profile rules, the plan up writes, job tags, the hold queue,
and the proxy holding requests while the local backend starts real mock-engine replicas.

The proxy runs in-process (tests look at its controller's state); each replica is one
submission of the rendered job script, run by the local backend as a real process group.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from proxy_helpers import proxy, wait_until

from biofleet.backends.local import LocalScheduler
from biofleet.backends.slurm import parse_tagged
from biofleet.elastic.hold import ContinuedStream, HeldQueue, Refusal
from biofleet.elastic.state import fleet_tag, load_elastic_state
from biofleet.errors import ProfileError
from biofleet.fleet import open_fleet, prepare_fleet_dir
from biofleet.fleet.elastic import make_plan, stop_and_cancel, write_plan
from biofleet.plan import fit_inputs, summarize
from biofleet.profile import load_profile
from biofleet.proxy.config import ProxyConfig
from biofleet.render import render_fleet, render_job

DATA = Path(__file__).parent / "data" / "slurm"

ELASTIC = """\
name: {name}
cluster:
  workdir: {workdir}
  bind_host: 127.0.0.1
  advertise: loopback
servers:
  coder:
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    engine: mock
    replicas: {{min: {min}, max: {max}}}
    max_restarts: 0
    extra_args: {extra_args}
    scaling: {scaling}
jobs:
  - name: coder
    nodes: [coder]
proxy:
  run: local
  host: 127.0.0.1
  port: null
"""


def write_profile(tmp_path: Path, *, name: str = "el", min: int = 0, max: int = 2, extra_args: str = "[]",
                  scaling: str = "{}") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(ELASTIC.format(name=name, workdir=tmp_path / "work", min=min, max=max, extra_args=extra_args,
                                scaling=scaling))
    return p


def errors_of(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    with pytest.raises(ProfileError) as ei:
        load_profile(p)
    return [str(i) for i in ei.value.issues]


# ---------------------------------------------------------------------------- the profile


def test_elastic_profile_loads_with_policy_defaults(tmp_path):
    p = load_profile(write_profile(tmp_path, min=0, max=4, scaling="{target: 2, idle_s: 30}"))
    spec = p.servers["coder"]
    assert spec.elastic is not None and (spec.elastic.min, spec.elastic.max) == (0, 4)
    assert spec.policy.target == 2 and spec.policy.idle_s == 30 and spec.policy.cold_start_s == 600
    assert p.elastic_servers()["coder"].name == "coder" and p.elastic_jobs() == {"coder"}
    assert summarize(p).servers == 4  # counted at max


BAD = """\
name: bad
servers:
  coder:
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    replicas: {replicas}
    {more}
  math:
    model: Qwen/Qwen2.5-Math-7B-Instruct
jobs:
  - name: t4
    gpu: T4
    nodes: {nodes}
"""


@pytest.mark.parametrize(("replicas", "more", "nodes", "expected"), [
    ("{min: 3, max: 2}", "", "[coder, math]", "p.yaml:5  servers.coder.replicas: min (3) is above max (2); min <= max"),
    ("0", "", "[coder, math]", "p.yaml:5  servers.coder.replicas: must be a number of placements (1 or more), "
                               "or {min: 0, max: N} for an elastic server"),
    ("{min: 0, max: 2, most: 3}", "", "[coder, math]",
     "p.yaml:5  servers.coder.replicas.most: unknown key; valid keys: max, min"),
    ("{min: 0, max: 2}", "", "[coder, coder, math]",
     "p.yaml:5  servers.coder.replicas: is elastic ({min, max}) but the jobs place 'coder' 2 times; place it once, "
     "in a single-node job of its own: each replica is one submission of that job"),
    ("{min: 0, max: 2}", "", "[coder, math]",
     "p.yaml:12  jobs.0.nodes: places elastic server 'coder' in a job of 2 nodes; give it a single-node job "
     "(nodes: [coder]): the controller submits that job once per replica"),
    ("{min: 0, max: 2}", "", "[[coder, math]]",
     "p.yaml:12  jobs.0.nodes: places math beside elastic server 'coder'; an elastic server needs a job of its own "
     "(each replica is one submission of it), so move the others to another job"),
    ("1", "scaling: {target: 2}", "[coder, math]",
     "p.yaml:3  servers.coder: scaling applies to elastic servers only; give replicas: {min: 0, max: N} (a plain "
     "number keeps a fixed count) or remove scaling"),
    ("{min: 0, max: 2}", "scaling: {idle: 3}", "[coder, math]",
     "p.yaml:6  servers.coder.scaling.idle: unknown key (did you mean 'idle_s'?); valid keys: cold_start_s, idle_s, "
     "keepalive_s, max_held, metric, poll_s, scale_up_after_s, target"),
])
def test_elastic_profile_errors_name_file_line_and_fix(tmp_path, replicas, more, nodes, expected):
    errs = errors_of(tmp_path, BAD.format(replicas=replicas, more=more, nodes=nodes))
    assert any(e.endswith(expected) for e in errs), errs


def test_elastic_server_names_are_its_own(tmp_path):
    text = BAD.format(replicas="{min: 0, max: 2}", more="aliases: [m]", nodes="[coder]").replace(
        "    model: Qwen/Qwen2.5-Math-7B-Instruct\n",
        "    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n    served_name: m\n") + "  - name: m\n    nodes: [math]\n"
    errs = errors_of(tmp_path, text)
    assert any("servers.coder: is elastic and shares the name m with server 'math'" in e for e in errs), errs


def test_fit_check_labels_the_plan_each_replica_runs_and_render_is_one_replica(tmp_path):
    p = load_profile(write_profile(tmp_path, max=3))
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(f"extends: {tmp_path}/el.yaml\nname: elgpu\njobs:\n  - name: coder\n    gpu: T4\n"
                   "    nodes: [coder]\n")
    pg = load_profile(gpu)
    nodes = fit_inputs(pg)
    assert [n.label for n in nodes] == ["coder (each of up to 3 elastic replicas)"]
    assert summarize(pg).gpus == {"T4": 3}
    scripts = render_fleet(p, "/home/alice/biofleet/el")
    assert sorted(scripts) == ["coder.sbatch"]  # proxy.run: local
    assert "add_server coder generate mock" in scripts["coder.sbatch"] and "--array" not in scripts["coder.sbatch"]


def test_a_draining_replica_gets_no_new_requests():
    from biofleet.proxy.discovery import Backend, BackendSpec
    from biofleet.proxy.routing import pick_backend

    a, b = (Backend(BackendSpec(key=k, url=f"http://127.0.0.1:{p}", served_names=("coder",)))
            for k, p in (("coder@1", 1), ("coder@2", 2)))
    b.draining = True
    assert {pick_backend([a, b], "round-robin", c) for c in range(4)} == {a}
    a.draining = True
    assert pick_backend([a, b], "least-outstanding", 0) is None


def test_up_refuses_no_proxy_for_an_elastic_fleet(tmp_path):
    from biofleet.errors import FleetError
    from biofleet.fleet import up

    ref = write_profile(tmp_path)
    with open_fleet(load_profile(ref), backend="local") as fleet, pytest.raises(FleetError) as ei:
        up(fleet, profile_ref=str(ref), proxy_mode="none", wait=False)
    assert "coder are elastic: the controller that starts their replicas runs in the proxy" in str(ei.value)
    assert not Path(fleet.paths.state).exists()  # refused before anything was written or submitted


# ---------------------------------------------------------------------------- tags


def test_tagged_jobs_parsed_from_recorded_squeue():
    text = (DATA / "squeue_tagged.txt").read_text()
    assert parse_tagged(text, "biofleet:x:abc:") == {"biofleet:x:abc:123-ff": "1"}
    assert parse_tagged(text, "other") == {"other|pipe x": "2"}  # the comment keeps its pipes
    assert parse_tagged(text, "biofleet:y:") == {}


def test_fleet_tag_tells_fleets_apart_and_is_sbatch_safe():
    from biofleet.backends.slurm import check_tag

    a, b = fleet_tag("demo", "/home/a/biofleet/demo"), fleet_tag("demo", "/home/b/biofleet/demo")
    assert a != b and a.startswith("biofleet:demo:")
    check_tag(a + "coder:1700000000-abcd0123")
    check_tag(fleet_tag("we ird;name", "/x") + "s:1")
    with pytest.raises(ValueError):
        check_tag("x;rm -rf /")


def test_local_backend_finds_tagged_jobs_while_they_run(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/bash\n#SBATCH --job-name=t\nsleep 30\n")
    sched = LocalScheduler(tmp_path / "jobs")
    job = sched.submit(str(script), tag="biofleet:t:1:coder:9-aa")
    other = sched.submit(str(script))
    try:
        assert sched.find_tagged("biofleet:t:1:") == {"biofleet:t:1:coder:9-aa": job}
    finally:
        sched.cancel([job, other])
        sched.wait_gone([job, other], 10)
    assert sched.find_tagged("biofleet:t:1:") == {}  # ended: no longer in "the queue"


# ---------------------------------------------------------------------------- the hold queue


def test_held_queue_releases_in_arrival_order_and_fails_with_the_reason():
    async def main() -> tuple[list[int], list[Refusal | None]]:
        q = HeldQueue("coder")
        order: list[int] = []

        async def waiter(i: int) -> Refusal | None:
            w = q.add(stream=False)
            r = await w.fut
            order.append(i)
            return r

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert len(q) == 5
        q.release_all()
        await asyncio.gather(*tasks)
        t2 = asyncio.ensure_future(waiter(9))
        await asyncio.sleep(0)
        q.fail_all(Refusal("job 7 FAILED", "replica_start_failed"))
        return order, [await t2]

    order, results = asyncio.run(main())
    assert order == [0, 1, 2, 3, 4, 9]  # released in arrival order; 9 came later (and was refused)
    assert results[0] is not None and results[0].reason == "job 7 FAILED"


def test_held_requests_are_spread_over_replicas_started_together():
    async def main() -> list[int]:
        q = HeldQueue("coder")
        ws = [q.add(stream=False) for _ in range(10)]
        got = [len(q.spread(100.0, ready=1, coming=3, spread_s=5))]  # its share: ceil(10 / 4)
        got.append(len(q.spread(100.1, ready=1, coming=3, spread_s=5)))  # nothing more until another is ready
        got.append(len(q.spread(100.5, ready=2, coming=2, spread_s=5)))  # half of 10 by now
        got.append(len(q.spread(105.0, ready=2, coming=2, spread_s=5)))  # spread_s over: the rest
        assert all(w.fut.done() for w in ws) and not q.waiters and q.released == 0
        return got

    assert asyncio.run(main()) == [3, 0, 2, 5]


def test_continued_stream_passes_events_and_turns_an_error_answer_into_an_event():
    async def run(messages):
        sent = []

        async def send(m):
            sent.append(m)

        cs = ContinuedStream(send)
        for m in messages:
            await cs(m)
        return sent

    ok = asyncio.run(run([
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]},
        {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]))
    assert [m["type"] for m in ok] == ["http.response.body", "http.response.body"]  # no second header block
    err = asyncio.run(run([
        {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": b'{"error": {"message": "no healthy replica"}}', "more_body": False},
    ]))
    assert err[0]["body"].startswith(b"data: {") and err[0]["body"].endswith(b"\n\n")  # an SSE event
    event = json.loads(err[0]["body"].decode().removeprefix("data: "))
    assert event["error"] == {"message": "no healthy replica", "type": "service_unavailable", "param": None,
                              "code": "upstream_error"}
    assert err[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


# ---------------------------------------------------------------------------- in the proxy, local backend


@pytest.fixture
def elastic_proxy(tmp_path, stack):
    """start(**profile options) -> (proxy server, app, fleet): the plan written as up writes it, an
    in-process proxy running the controller, replicas as local processes; everything ends at teardown."""
    fleets = []

    def start(**kw):
        profile = load_profile(write_profile(tmp_path, **kw))
        fleet = open_fleet(profile, backend="local")
        fleets.append(fleet)
        prepare_fleet_dir(fleet)
        plan = make_plan(fleet, profile)
        assert plan is not None
        write_plan(fleet, plan, {j.name: render_job(profile, j, fleet.paths.root) for j in profile.jobs})
        config = ProxyConfig(registry_dir=Path(fleet.paths.registry), elastic_plan=Path(fleet.paths.elastic_plan),
                             backend_api_key_file=Path(fleet.paths.backend_key), probe_interval_s=0.5,
                             discovery_interval_s=0.2, readmit_after=1)
        server, app = proxy(stack, config)
        return server, app, fleet

    yield start
    stack.close()  # the proxy (and its controller) first, so nothing is submitted while we cancel
    for fleet in fleets:
        plan = make_plan(fleet, fleet.profile)
        ids = stop_and_cancel(fleet, plan.tag, journal(fleet), lambda m: None)
        fleet.scheduler.cancel(ids)
        fleet.scheduler.wait_gone(ids, 20)
        fleet.close()


def chat(url: str, *, stream: bool = False, timeout: float = 60) -> httpx.Response:
    body = {"model": "coder", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def journal(fleet):
    return load_elastic_state(fleet.runner, fleet.paths)


def test_zero_to_one_holds_requests_and_streams_get_keepalives(elastic_proxy):
    server, app, fleet = elastic_proxy(extra_args='[--startup-delay-s, "3"]',
                                       scaling="{target: 4, keepalive_s: 1, cold_start_s: 40, poll_s: 1}")
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        results[i] = chat(server.url, stream=i % 2 == 1)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    wait_until(lambda: len(app.state.elastic.holds["coder"]) == 4, 10, "4 requests held")
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    for i, r in results.items():
        assert r.status_code == 200, (i, r.text)
        if i % 2:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert ": waiting for a replica of coder" in r.text  # kept alive while held
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            assert r.json()["choices"][0]["message"]["content"]
    # the journal is written just after the step that released them
    wait_until(lambda: "ready" in [d.action for d in journal(fleet).decisions], 5, "the journal to say ready")
    j = journal(fleet)
    ups = [d for d in j.decisions if d.action == "scale-up"]
    # the first request started one replica; the next three waited for it (ceil(4 / target 4) = 1)
    assert len(ups) == 1 and ups[0].reason == "1 request(s) held and no replica" and ups[0].job_id
    assert [d.action for d in j.decisions].count("ready") == 1
    text = httpx.get(f"{server.url}/metrics").text
    assert 'biofleet_elastic_held_total{outcome="released",server="coder"} 4.0' in text
    assert 'biofleet_elastic_replicas{phase="ready",server="coder"} 1.0' in text
    assert "biofleet_elastic_cold_start_seconds_count" in text
    # /v1/models lists it, and /health is not degraded by an elastic model
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_scaled_to_zero_model_is_listed_and_healthy(elastic_proxy):
    server, _, _ = elastic_proxy(scaling="{poll_s: 1}")
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["coder"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_cold_start_timeout_answers_503_with_the_reason_streaming_in_band(elastic_proxy):
    server, _, fleet = elastic_proxy(extra_args='[--startup-delay-s, "60"]',
                                       scaling="{cold_start_s: 2.5, keepalive_s: 1, poll_s: 1}")
    t0 = time.monotonic()
    r = chat(server.url)
    assert 2 <= time.monotonic() - t0 < 15
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "cold_start_timeout" and err["type"] == "service_unavailable"
    assert "none became ready within cold_start_s=2.5s" in err["message"]
    assert "RUNNING" in err["message"] and "not answering its probe yet" in err["message"], err
    s = chat(server.url, stream=True)
    assert s.status_code == 200 and ": waiting for a replica" in s.text
    event = json.loads(s.text.strip().splitlines()[-1].removeprefix("data: "))
    assert event["error"]["code"] == "cold_start_timeout" and event["error"]["retry_after"] == 1
    # the replica keeps starting for later requests: one submission for both
    wait_until(lambda: journal(fleet) is not None, 5, "the journal")
    assert [d.action for d in journal(fleet).decisions].count("scale-up") == 1


def test_held_queue_is_bounded_and_a_client_that_leaves_leaves_it(elastic_proxy):
    server, app, _ = elastic_proxy(extra_args='[--startup-delay-s, "60"]',
                                   scaling="{max_held: 2, cold_start_s: 8, poll_s: 1}")
    held = lambda: len(app.state.elastic.holds["coder"])  # noqa: E731
    first = threading.Thread(target=chat, args=(server.url,), kwargs={"timeout": 20})
    first.start()
    wait_until(lambda: held() == 1, 10, "1 request held")
    with pytest.raises(httpx.ReadTimeout):  # a client that gives up...
        chat(server.url, timeout=1.0)
    wait_until(lambda: held() == 1, 5, "...is gone from the queue")
    second = threading.Thread(target=chat, args=(server.url,), kwargs={"timeout": 20})
    second.start()
    wait_until(lambda: held() == 2, 10, "2 requests held")
    r = chat(server.url)
    assert r.status_code == 503 and r.json()["error"]["code"] == "held_queue_full"
    assert "2 requests are already waiting" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    first.join(20)
    second.join(20)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'biofleet_elastic_held_total{outcome="gone",server="coder"} 1.0' in text
    assert 'biofleet_elastic_held_total{outcome="full",server="coder"} 1.0' in text
    assert 'biofleet_elastic_held_total{outcome="timeout",server="coder"} 2.0' in text


def test_failed_start_answers_held_requests_then_backs_off(elastic_proxy):
    server, _, fleet = elastic_proxy(extra_args="[--no-such-flag]", scaling="{cold_start_s: 60, poll_s: 1}")
    t0 = time.monotonic()
    r = chat(server.url)
    assert time.monotonic() - t0 < 30  # far below cold_start_s: the failure ends the wait
    assert r.status_code == 503 and r.json()["error"]["code"] == "replica_start_failed", r.text
    assert "FAILED" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
    again = chat(server.url)  # within the back-off: at once, same reason, no new submission
    assert again.status_code == 503 and "the next try is in" in again.json()["error"]["message"]
    wait_until(lambda: "failed" in [d.action for d in journal(fleet).decisions], 5, "the journal to say failed")
    j = journal(fleet)
    assert [d.action for d in j.decisions].count("scale-up") == 1
    assert [d.action for d in j.decisions].count("failed") == 1
