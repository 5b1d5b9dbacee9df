"""biofleet prefetch: against a Hub stand-in on loopback (the real huggingface_hub client), and offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub
from typer.testing import CliRunner

from biofleet.cli.main import app
from biofleet.fleet import open_fleet
from biofleet.fleet.prefetch import prefetch
from biofleet.profile import load_profile


def _fake_cached_model(hf_home: Path, repo: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks, refs/main."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    sha = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = root / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        (snap / name).symlink_to(blob)


def test_prefetch_offline_reports_cached_and_missing(tmp_path, monkeypatch):
    """Offline: no hang, cached models reported with their size, the rest named as not downloadable."""
    hf = tmp_path / "hf"
    _fake_cached_model(hf, "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", {"config.json": b"{}", "model.safetensors": b"x" * 4096})
    prof = tmp_path / "p.yaml"
    prof.write_text(
        f"extends: t4x4\nname: pf\ncluster:\n  workdir: {tmp_path}/w\n  hf_home: {hf}\n"
        f"  python: {__import__('sys').executable}\n"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["prefetch", "--profile", str(prof), "--json", "--backend", "local"])
    assert r.exit_code == 1, r.output  # some models are not cached and cannot be fetched offline
    res = {x["model"]: x for x in json.loads(r.stdout)}
    cached = res["Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"]
    assert cached["status"] == "cached" and cached["bytes"] == 4098
    assert res["BAAI/bge-m3"]["status"] == "offline"
    assert set(res) == {"Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                        "meta-llama/Llama-3.2-3B-Instruct", "BAAI/bge-m3", "microsoft/Phi-3.5-mini-instruct",
                        "BAAI/bge-base-en-v1.5", "BioMistral/BioMistral-7B-AWQ-QGS128-W4-GEMM"}
    r = CliRunner().invoke(app, ["prefetch", "--profile", str(prof), "--check", "--json", "--backend", "local"])
    assert json.loads(r.stdout)[1]["status"] == "missing"


def _profile(tmp_path: Path) -> Path:
    prof = tmp_path / "pf.yaml"
    prof.write_text(
        "name: pf\n"
        f"cluster:\n  partition: cpuspot\n  workdir: {tmp_path}/w\n  hf_home: {tmp_path}/hf\n  python: {sys.executable}\n"
        "servers:\n  tiny:\n    model: org/tiny\n  emb:\n    model: org/emb\n    kind: embed\n"
        "jobs:\n  - name: cpu\n    nodes: [tiny, emb]\n"
    )
    return prof


def test_prefetch_downloads_what_vllm_loads_with_progress_then_reports_cached(tmp_path, monkeypatch):
    # 21 MB at 7 MB/s: huggingface_hub writes 10 MiB chunks, so polls see it part-way
    weights = bytes(range(256)) * 82_000
    repos = {
        "org/tiny": {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}",
                     "model.safetensors": weights, "pytorch_model.bin": weights, "onnx/model.onnx": b"o" * 1000},
        "org/emb": {"config.json": b"{}", "pytorch_model.bin": b"w" * 50_000},  # no safetensors: .bin is needed
    }
    prof = _profile(tmp_path)
    with FakeHub(repos, bytes_per_s=7e6) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = CliRunner().invoke(app, ["prefetch", "--profile", str(prof), "--check", "--json", "--backend", "local"])
        assert r.exit_code == 1 and [x["status"] for x in json.loads(r.stdout)] == ["missing", "missing"]

        seen: list[tuple[str, int | None, int]] = []
        events: list[str] = []
        with open_fleet(load_profile(prof), backend="local") as fleet:
            res = prefetch(fleet, on_event=events.append, poll_s=0.3,
                           on_progress=lambda m, done, total: seen.append((m, done, total)))
        assert [(x.model, x.status) for x in res] == [("org/tiny", "downloaded"), ("org/emb", "downloaded")]
        tiny_bytes = len(weights) + len(repos["org/tiny"]["config.json"]) + 2
        assert res[0].bytes == tiny_bytes and res[1].bytes == 50_002
        assert sorted(hub.gets) == ["config.json", "config.json", "model.safetensors", "pytorch_model.bin",
                                    "tokenizer.json"]  # the .bin twin and the ONNX export of org/tiny skipped
        assert events[0] == "[1/2] org/tiny: downloading 20.0 MiB"
        tiny = [(done, total) for m, done, total in seen if m == "org/tiny"]
        assert tiny and all(total == tiny_bytes for _, total in tiny)
        assert any(2**20 * 10 <= done < len(weights) for done, _ in tiny), tiny  # seen mid-download
        assert tiny[-1] == (tiny_bytes, tiny_bytes)  # and complete at the end
        assert [d for d, _ in tiny] == sorted(d for d, _ in tiny)

        gets = len(hub.gets)
        r = CliRunner().invoke(app, ["prefetch", "--profile", str(prof), "--json", "--backend", "local"])
        assert r.exit_code == 0, r.output
        assert [(x["status"], x["bytes"]) for x in json.loads(r.stdout)] == [("cached", tiny_bytes), ("cached", 50_002)]
        assert len(hub.gets) == gets  # nothing fetched twice


def test_prefetch_unknown_repo_is_a_clear_failure(tmp_path, monkeypatch):
    with FakeHub({"org/tiny": {"config.json": b"{}"}}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = CliRunner().invoke(app, ["prefetch", "--profile", str(_profile(tmp_path)), "--json", "--backend", "local"])
    assert r.exit_code == 1
    res = {x["model"]: x for x in json.loads(r.stdout)}
    assert res["org/tiny"]["status"] == "downloaded"
    assert res["org/emb"]["status"] == "failed" and "RepositoryNotFound" in res["org/emb"]["error"]
    assert "\n" not in res["org/emb"]["error"]


@pytest.mark.ssh
def test_prefetch_over_ssh_uses_the_jobs_hub_settings(sshd_server, tmp_path, monkeypatch):
    """On the login node, through the one SSH connection (the size polls share it with the
    download); HF_ENDPOINT comes from cluster.env, as the jobs would see it, HF_HUB_OFFLINE does not."""
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    weights = bytes(range(256)) * 50_000  # 12.8 MB: one 10 MiB chunk in, then the rest
    with FakeHub({"org/tiny": {"config.json": b"{}", "model.safetensors": weights},
                  "org/emb": {"config.json": b"{}", "model.safetensors": b"e" * 1000}}, bytes_per_s=2e6) as hub:
        # 2 MB/s: the cache holds the first 10 MiB chunk for over a second before the rest lands, so a
        # poll every 0.3 s (each an SSH command) sees it even on a loaded machine.
        prof = _profile(tmp_path)
        prof.write_text(prof.read_text().replace(
            "  partition: cpuspot\n",
            "  partition: cpuspot\n"
            f"  env: {{HF_ENDPOINT: '{hub.url}', HF_HUB_OFFLINE: '1'}}\n"
            f"  ssh: {{host: 127.0.0.1, port: {sshd_server.port}, user: {sshd_server.user}, "
            f"key_file: {sshd_server.key_file}, known_hosts: {sshd_server.known_hosts}}}\n"))
        seen = []
        with open_fleet(load_profile(prof)) as fleet:
            assert type(fleet.runner).__name__ == "SSHRunner"
            res = prefetch(fleet, poll_s=0.3, on_progress=lambda m, done, total: seen.append((m, done, total)))
    assert [(x.model, x.status, x.bytes) for x in res] == [("org/tiny", "downloaded", len(weights) + 2),
                                                          ("org/emb", "downloaded", 1002)]
    assert any(m == "org/tiny" and done is not None and 10 * 2**20 <= done < total for m, done, total in seen), seen
