"""The whole lifecycle on the local backend (no SLURM): up, status, proxy, reconcile, down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from biofleet.cli.main import app
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile


@pytest.fixture
def demo_profile(tmp_path) -> Path:
    p = tmp_path / "demo.yaml"
    p.write_text(f"extends: cpu-demo\nname: demo-local\ncluster:\n  workdir: {tmp_path}/work\n")
    return p


def _processes_of(fleet_dir: str) -> list[int]:
    """PIDs whose command line or environment mentions this fleet (servers, scripts, proxy)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if fleet_dir.encode() in cmd:
            pids.append(int(proc.name))
    return pids


def test_up_status_proxy_reconcile_down(demo_profile):
    profile = load_profile(demo_profile)
    events: list[str] = []
    with open_fleet(profile, backend="local") as fleet:
        try:
            _lifecycle(fleet, demo_profile, events)
        finally:
            down(fleet)  # whatever failed above, leave no process behind


def _lifecycle(fleet, demo_profile, events):
    if True:
        res = up(fleet, profile_ref=str(demo_profile), timeout=60, on_event=events.append, poll=0.3)
        assert not res.timed_out
        assert [s.state for s in res.status.servers] == [ServerState.READY] * 4, events
        assert {r.job for r in res.submitted} == {"coders", "misc"}

        # status learns from the proxy (with the token: its /health details are not public) which
        # servers it routes to; up --renew drains old tasks on that answer
        routed = collect_status(fleet).proxy.backends
        assert routed is not None and sorted(routed) == sorted(f"{s.name}@{s.job_id}" for s in res.status.servers)
        assert all(routed.values()), routed

        # the registry holds one record per server, written by the jobs themselves
        regs = sorted(p.name for p in Path(fleet.paths.registry).glob("*.json"))
        assert len(regs) == 4 and all(r.endswith(".json") for r in regs)

        # secrets are 0600 and never in scripts
        token = Path(fleet.paths.token).read_text().strip()
        assert (Path(fleet.paths.token).stat().st_mode & 0o777) == 0o600
        assert (Path(fleet.paths.backend_key).stat().st_mode & 0o777) == 0o600
        for script in Path(fleet.paths.scripts).glob("*.sbatch"):
            assert token not in script.read_text()

        # the proxy routes by model and by task type, and refuses requests without the token
        url = json.loads(Path(fleet.paths.proxy_record).read_text())["url"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}).status_code != 200:
            assert time.monotonic() < deadline, "proxy never saw every backend healthy"
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth,
                       json={"model": "auto", "task_type": "statistics", "messages": [{"role": "user", "content": "mean?"}]})
        assert r.status_code == 200
        assert r.headers["x-biofleet-route"].startswith("math@")
        r = httpx.post(f"{url}/v1/embeddings", headers=auth, json={"model": "embeddings", "input": "a gene"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) > 0, r.text
        assert httpx.get(f"{url}/v1/models").status_code == 401

        # the backends themselves refuse requests without the backend key
        rec = json.loads(next(Path(fleet.paths.registry).glob("math.*.json")).read_text())
        assert httpx.get(f"{rec['url']}/v1/models").status_code == 401

        # kill one coder task: status shows it, up resubmits only that task
        st = collect_status(fleet)
        coder1 = next(s for s in st.servers if s.name == "coder-1")
        local_rec = json.loads(Path(fleet.paths.root, "local-jobs", f"{coder1.job_id}.json").read_text())
        os.killpg(local_rec["pgid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while next(s for s in collect_status(fleet).servers if s.name == "coder-1").state == ServerState.READY:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        res2 = up(fleet, profile_ref=str(demo_profile), timeout=60, poll=0.3)
        assert [(r.job, r.tasks) for r in res2.submitted] == [("coders", [1])]
        assert sorted(res2.kept) == ["coder-0", "embeddings", "math"]
        assert all(s.state == ServerState.READY for s in res2.status.servers)

        fleet_dir = fleet.paths.root
        assert _processes_of(fleet_dir)
        d = down(fleet)
        assert d.had_state and len(d.cancelled) == 3
        # nothing left running, no registry records, logs kept
        deadline = time.monotonic() + 10
        while _processes_of(fleet_dir):
            assert time.monotonic() < deadline, _processes_of(fleet_dir)
            time.sleep(0.2)
        assert list(Path(fleet.paths.registry).glob("*.json")) == []
        assert list(Path(fleet.paths.logs).glob("*.log"))
        # down twice is safe
        d2 = down(fleet)
        assert not d2.had_state and d2.cancelled == []


def test_cli_up_json_status_down(demo_profile, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    runner = CliRunner()
    ref = str(demo_profile)
    r = runner.invoke(app, ["up", "--profile", ref, "--backend", "local", "--timeout", "60", "--json"])
    try:
        assert r.exit_code == 0, r.output
        payload = json.loads(r.stdout)
        assert payload["status"]["ready"] == 4
        r = runner.invoke(app, ["status", "--profile", ref, "--json"])
        st = json.loads(r.stdout)
        assert st["ready"] == 4 and st["proxy"]["state"] == "READY"
        assert {s["name"] for s in st["servers"]} == {"coder-0", "coder-1", "math", "embeddings"}
        junk = Path(st["fleet_dir"]) / "registry" / "junk.json"  # a record that is not one: said, not fatal
        junk.write_text("{not json")
        st = json.loads(runner.invoke(app, ["status", "--profile", ref, "--json"]).stdout)
        assert st["ready"] == 4 and any("1 record(s) ignored: not JSON" in n for n in st["notes"]), st["notes"]
        junk.unlink()
        r = runner.invoke(app, ["logs", "math", "--profile", ref, "--slurm"])
        assert r.exit_code == 0 and "biofleet: starting math (mock)" in r.stdout, r.stdout
        r = runner.invoke(app, ["logs", "math", "--profile", ref])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["register", "cloud-x", "http://127.0.0.1:9", "--served-name", "x", "--profile", ref])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["status", "--profile", ref, "--json"])
        assert json.loads(r.stdout)["extra_endpoints"][0]["server"] == "cloud-x"
        r = runner.invoke(app, ["unregister", "cloud-x", "--profile", ref])
        assert r.exit_code == 0
        r = runner.invoke(app, ["logs", "nope", "--profile", ref])
        assert r.exit_code == 1 and "no server 'nope'" in str(r.exception)
        _watch_commands(ref, Path(st["fleet_dir"]), tmp_path)
    finally:
        r = runner.invoke(app, ["down", "--profile", ref, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["was_up"] is True


def _biofleet(*argv: str) -> subprocess.Popen[str]:
    """The installed command as a script runs it in the background: output into a pipe (not a terminal), no
    COLUMNS, SIGINT ignored as a shell leaves it for a background job (Python then raises no KeyboardInterrupt:
    a watch must still end on `kill -INT`)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.Popen([sys.executable, "-c", "from biofleet.cli.main import main; main()", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def _lines_until(proc: subprocess.Popen[str], done: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
    lines: list[str] = []
    box: dict[str, BaseException] = {}

    def read() -> None:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if done(lines):
                    return
        except BaseException as exc:  # handed to the test
            box["exc"] = exc

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive() and "exc" not in box, f"{box} after {lines[-5:]}"
    return lines


def _interrupted(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C, as a user ends a watch: the exit status and what it said on stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, err


def _watch_commands(ref: str, fleet_dir: Path, tmp_path: Path) -> None:
    """The README's `status --watch`, `scrape-config --watch` and `logs -f` on a running fleet: each refresh is seen
    (JSON lines; stamped tables in a pipe, cells not cut to 80 columns), the targets file follows the
    registry, and Ctrl-C ends them with exit 0 and no traceback."""
    p = _biofleet("status", "--profile", ref, "--watch", "--json", "--interval", "0.2")
    lines = _lines_until(p, lambda ls: len(ls) >= 2)
    docs = [json.loads(line) for line in lines]
    assert all(d["ready"] == 4 and d["fleet_dir"] == str(fleet_dir) for d in docs), docs
    rc, err = _interrupted(p)
    assert rc == 0 and "Traceback" not in err, err

    p = _biofleet("status", "--profile", ref, "--watch", "--interval", "0.2")
    lines = _lines_until(p, lambda ls: sum("4/4 servers ready" in x for x in ls) >= 2)
    text = "".join(lines)
    assert re.search(r"^─* ?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ─+$", text, re.M), text  # each refresh stamped
    assert "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ" in text and "…" not in text, text  # whole cells in a pipe
    rc, err = _interrupted(p)
    assert rc == 0 and "Traceback" not in err, err

    out = tmp_path / "prom"
    p = _biofleet("scrape-config", "--profile", ref, "--out", str(out), "--watch", "--interval", "0.2")
    _lines_until(p, lambda ls: any("target groups" in x for x in ls))
    targets = out / "biofleet-demo-local-targets.json"
    first = json.loads(targets.read_text())
    registry = fleet_dir / "registry"
    record = json.loads((registry / "math.1001.json").read_text())
    record.update(server="math-extra", job_id="4242", url="http://127.0.0.1:9", port=9)
    (registry / "math-extra.4242.json").write_text(json.dumps(record))  # as a job registers itself
    try:
        _lines_until(p, lambda ls: sum("target groups" in x for x in ls) >= 1)  # the next write
        deadline = time.monotonic() + 20
        while "127.0.0.1:9\"" not in targets.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "127.0.0.1:9\"" in targets.read_text() and targets.read_text() != json.dumps(first)
    finally:
        (registry / "math-extra.4242.json").unlink()
    rc, err = _interrupted(p)
    assert rc == 0 and "Traceback" not in err, err
    p = _biofleet("logs", "math", "--profile", ref, "--follow")
    _lines_until(p, lambda ls: any("mock engine" in x for x in ls))
    rc, err = _interrupted(p)
    assert rc == 0 and "Traceback" not in err, err
    r = CliRunner().invoke(app, ["status", "--profile", ref, "--watch", "--interval", "0"])
    assert r.exit_code == 2 and "--interval" in r.output, r.output


def test_up_refuses_a_plan_that_does_not_fit(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "extends: t4x4\nname: bad\n"
        f"cluster: {{workdir: {tmp_path}/w}}\n"
        "servers:\n  analysis: {gpu_memory_utilization: 0.3}\n"
    )
    r = CliRunner().invoke(app, ["up", "--profile", str(p), "--backend", "local", "--no-wait"])
    assert r.exit_code == 1
    assert "fit-check refuses this plan; nothing was submitted" in str(r.exception)
    assert not (tmp_path / "w" / "bad" / "state.json").exists()


def test_logs_read_from_the_end_and_follow_by_offset(tmp_path, capsys):
    # `biofleet logs` on a 6 MB log: the last lines come from reads at the end, never the whole file, and
    # following prints only what was appended (from a byte offset, so a multi-byte character is never split).
    from biofleet.cli.fleet_cmd import _last_lines, _print_from
    from biofleet.remote.local import LocalRunner

    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i} \u00e9\u00e9\n" for i in range(400_000)))
    size = log.stat().st_size
    reads: list[tuple[int, int]] = []

    class Counting(LocalRunner):
        def read_range(self, path, start, max_bytes):
            reads.append((start, max_bytes))
            return super().read_range(path, start, max_bytes)

        def read_text(self, path, max_bytes=0):  # the whole file is never asked for
            raise AssertionError("read whole")

    runner = Counting()
    offset = _last_lines(runner, str(log), 3)
    assert capsys.readouterr().out == "line 399997 \u00e9\u00e9\nline 399998 \u00e9\u00e9\nline 399999 \u00e9\u00e9\n"
    assert offset == size and sum(n for _, n in reads) <= 64 * 1024
    # a tail longer than the first span widens it
    reads.clear()
    _last_lines(runner, str(log), 10_000)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10_000 and out[0] == "line 390000 \u00e9\u00e9" and len(reads) == 2
    # appended text, then a truncated (rotated) log printed from its start
    with log.open("a") as fh:
        fh.write("new \u00e9\n")
    assert _print_from(runner, str(log), offset) == size + len("new \u00e9\n".encode())
    assert capsys.readouterr().out == "new \u00e9\n"
    log.write_text("fresh\n")
    assert _print_from(runner, str(log), size) == 6 and capsys.readouterr().out == "fresh\n"
    # --lines 0 prints everything, a megabyte at a time
    log.write_text("".join(f"{i}\n" for i in range(500_000)))
    reads.clear()
    assert _print_from(runner, str(log), 0) == log.stat().st_size
    assert capsys.readouterr().out.splitlines() == [str(i) for i in range(500_000)] and len(reads) == 4
