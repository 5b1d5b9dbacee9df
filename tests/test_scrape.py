"""biofleet scrape-config: a Prometheus job with file-based discovery that follows the registry."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from biofleet.cli.main import app
from biofleet.fleetdir import FleetState, ProxyRecord
from biofleet.registry import Endpoint, write_record


def test_scrape_config_follows_registry(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"extends: cpu-demo\nname: scr\ncluster:\n  workdir: {tmp_path}/w\n")
    fleet_dir = tmp_path / "w" / "scr"
    reg = fleet_dir / "registry"
    write_record(reg, Endpoint(fleet="scr", server="coder-0", url="http://10.1.2.3:41000", served_names=("coder",),
                               engine="vllm", job_id="77_0"))
    write_record(reg, Endpoint(fleet="scr", server="math", url="http://10.1.2.4:41001", served_names=("math", "stats"),
                               engine="vllm", job_id="78"))
    write_record(reg, Endpoint(fleet="scr", server="cloud", url="https://api.example.org", served_names=("x",),
                               manual=True))
    state = FleetState(fleet="scr", profile=str(prof), backend="local", fleet_dir=str(fleet_dir),
                       proxy=ProxyRecord(run="local", url="http://127.0.0.1:8080"))
    (fleet_dir / "state.json").write_text(state.dumps())
    out = tmp_path / "prom"
    r = CliRunner().invoke(app, ["scrape-config", "--profile", str(prof), "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((out / "biofleet-scr.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "biofleet-scr"
    targets_file = Path(job["file_sd_configs"][0]["files"][0])
    assert targets_file == (out / "biofleet-scr-targets.json").resolve()
    groups = json.loads(targets_file.read_text())
    assert [g["targets"] for g in groups] == [["10.1.2.3:41000"], ["10.1.2.4:41001"], ["127.0.0.1:8080"]]
    assert groups[1]["labels"]["served_names"] == "math,stats" and groups[1]["labels"]["job_id"] == "78"
    assert groups[2]["labels"]["role"] == "proxy"


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
