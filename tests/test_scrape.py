"""biofleet scrape-config: a Prometheus job with file-based discovery that follows the registry."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from biofleet.cli.main import app
from biofleet.fleet.state import FleetState, ProxyRecord
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
    (fleet_dir / "secrets").mkdir(mode=0o700)
    (fleet_dir / "secrets" / "proxy.token").write_text("tok-123\n")
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
    # the proxy's /metrics needs the token: its own job sends it, read from a private file
    servers, prox = cfg["scrape_configs"]
    assert servers["relabel_configs"] == [{"source_labels": ["role"], "regex": "proxy", "action": "drop"}]
    assert "authorization" not in servers
    assert prox["job_name"] == "biofleet-scr-proxy"
    assert prox["relabel_configs"] == [{"source_labels": ["role"], "regex": "proxy", "action": "keep"}]
    assert prox["file_sd_configs"] == servers["file_sd_configs"]
    cred = Path(prox["authorization"]["credentials_file"])
    assert prox["authorization"]["type"] == "Bearer" and cred == (out / "biofleet-scr-proxy.token").resolve()
    assert cred.read_text().strip() == "tok-123" and cred.stat().st_mode & 0o777 == 0o600
