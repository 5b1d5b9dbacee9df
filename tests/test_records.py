"""The records a job writes (jobkit, run as the job script runs it) are exactly what biofleet reads.

jobkit is the one writer of the registry and supervision records on the cluster side; Endpoint
and Supervision are the readers. If a field is added to one side only, these tests fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydantic import ConfigDict

from biofleet.clusterside import jobkit
from biofleet.fleet.state import Supervision
from biofleet.registry import Endpoint, endpoint_key, read_records
from biofleet.render import jobkit_source


class StrictEndpoint(Endpoint):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StrictSupervision(Supervision):
    model_config = ConfigDict(extra="forbid")


def jobkit_cli(tmp_path: Path, *args: str) -> str:
    """jobkit as the rendered script runs it: its source in a file, the node's python3, no biofleet."""
    prog = tmp_path / "jobkit.py"
    prog.write_text(jobkit_source())
    r = subprocess.run([sys.executable, "-I", str(prog), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_registry_record_is_what_the_reader_reads(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    jobkit_cli(tmp_path, "register", str(reg), "fleetA", "12_3", "3", "1", "t4-07", "10.0.0.7",
               "coder-3", "generate", "vllm", "coder,qwen-coder", "41234", "999")
    files = list(reg.iterdir())
    assert [f.name for f in files] == ["coder-3.12_3.json"] and oct(files[0].stat().st_mode & 0o777) == "0o644"
    raw = json.loads(files[0].read_text())
    ep = StrictEndpoint.model_validate(raw)  # no field the reader does not know
    written = set(raw)
    defaulted = {n for n, f in Endpoint.model_fields.items() if not f.is_required()}
    assert set(Endpoint.model_fields) - written <= defaulted
    assert set(Endpoint.model_fields) - written == {"manual"}  # the one field only `biofleet register` sets
    assert ep.url == "http://10.0.0.7:41234" and ep.array_task_id == 3 and ep.node == "t4-07"
    assert ep.served_names == ("coder", "qwen-coder") and ep.key == endpoint_key("coder-3", "12_3") == "coder-3@12_3"
    assert [e.key for e in read_records(reg)] == ["coder-3@12_3"]


def test_ipv6_address_and_plain_job(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    jobkit_cli(tmp_path, "register", str(reg), "f", "77", "0", "0", "", "fd00::7", "math", "generate", "mock",
               "math", "8001", "5")
    ep = read_records(reg)[0]
    assert ep.url == "http://[fd00::7]:8001" and ep.array_task_id is None and ep.job_id == "77"


def test_supervision_record_is_what_status_reads(tmp_path):
    d = tmp_path / "servers"
    d.mkdir()
    jobkit_cli(tmp_path, "state", str(d), "math", "12_0", "restarting", "exited with code 137; restart 1 of 3 in 1s",
               "1", "3", "137", "", "2")
    raw = json.loads((d / "math.12_0.json").read_text())
    sup = StrictSupervision.model_validate(raw)
    assert set(raw) == set(Supervision.model_fields)
    assert (sup.state, sup.restarts, sup.last_exit, sup.pid, sup.devices) == ("restarting", 1, 137, None, "2")


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    target = d / "x.json"
    target.mkdir()  # a directory where the record should go: the rename fails
    try:
        jobkit.atomic_write_text(str(target), "{}")
    except OSError:
        pass
    else:
        raise AssertionError("writing over a directory should fail")
    assert sorted(p.name for p in d.iterdir()) == ["x.json"]


def test_pick_port_gives_a_bindable_port(tmp_path):
    port = int(jobkit_cli(tmp_path, "pick-port", "127.0.0.1").strip())
    assert 1024 <= port <= 65535
