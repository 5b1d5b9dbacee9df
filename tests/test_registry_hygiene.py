"""The registry and the fleet directory against a neighbour who can write files we read.

Records come from job scripts, ``biofleet register`` and, on a shared filesystem, from whoever can
write the registry directory. A bad one must cost only itself: skipped, bounded, never blocking.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from biofleet.fleet import open_fleet, prepare_fleet_dir, register_endpoint
from biofleet.profile import load_profile
from biofleet.registry import MAX_RECORD_BYTES, read_records
from biofleet.remote.base import read_small_files

GOOD = {"fleet": "f", "server": "coder-0", "url": "http://127.0.0.1:8001", "served_names": ["coder"], "job_id": "12_0"}


def write(reg: Path, name: str, rec: dict) -> None:
    (reg / name).write_text(json.dumps(rec))


def read_with_deadline(reg: Path, seconds: float = 5.0):
    """read_records in a thread: a FIFO or device must not block it."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("recs", read_records(reg)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "reading the registry blocked"
    return box["recs"]


def test_bad_records_are_skipped_and_reading_never_blocks(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    write(reg, "coder-0.12_0.json", GOOD)
    os.mkfifo(reg / "fifo.json")  # a reader that opens it blocking would wait forever
    (reg / "zero.json").symlink_to("/dev/zero")  # would eat memory
    (reg / "outside.json").symlink_to(tmp_path / "elsewhere.json")
    write(tmp_path, "elsewhere.json", {**GOOD, "server": "outside"})
    (reg / "huge.json").write_text(json.dumps({**GOOD, "server": "huge", "fleet": "x" * (MAX_RECORD_BYTES + 10)}))
    hostile = {
        "creds.json": {**GOOD, "server": "creds", "url": "http://user:pass@127.0.0.1:8001"},
        "crlf.json": {**GOOD, "server": "crlf", "url": "http://127.0.0.1:8001\r\nX-Injected: 1"},
        "scheme.json": {**GOOD, "server": "scheme", "url": "file:///etc/passwd"},
        "traversal.json": {**GOOD, "server": "../state"},
        "ctrl.json": {**GOOD, "server": "x\nforged log line"},
        "dot.json": {**GOOD, "server": ".hidden"},
        "badname.json": {**GOOD, "served_names": ["a b"]},
        "job.json": {**GOOD, "server": "j", "job_id": "1; rm -rf ~"},
        "nojson.json": "not json",
    }
    for name, rec in hostile.items():
        (reg / name).write_text(rec if isinstance(rec, str) else json.dumps(rec))
    recs = read_with_deadline(reg)
    assert [r.server for r in recs] == ["coder-0"]


def test_record_count_is_bounded(tmp_path, monkeypatch):
    import biofleet.registry as registry

    reg = tmp_path / "registry"
    reg.mkdir()
    for i in range(30):
        write(reg, f"s{i:02d}.1_{i}.json", {**GOOD, "server": f"s{i:02d}", "job_id": f"1_{i}"})
    monkeypatch.setattr(registry, "MAX_RECORDS", 10)
    assert len(read_records(reg)) == 10


@pytest.fixture
def fleet(tmp_path):
    ref = tmp_path / "p.yaml"
    ref.write_text(f"extends: cpu-demo\nname: hyg\ncluster:\n  workdir: {tmp_path}/work\n")
    with open_fleet(load_profile(ref), backend="local") as f:
        yield f


@pytest.mark.parametrize("name", ["../state", "../secrets/x", "a/b", ".hidden", "x\ny", "", "a" * 65])
def test_register_refuses_names_that_leave_the_registry(fleet, name):
    from biofleet.errors import FleetError

    prepare_fleet_dir(fleet)
    before = {p: p.read_bytes() for p in Path(fleet.paths.root).rglob("*") if p.is_file()}
    with pytest.raises(FleetError, match="NAME"):
        register_endpoint(fleet, name, "http://127.0.0.1:9", ["x"])
    after = {p: p.read_bytes() for p in Path(fleet.paths.root).rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


@pytest.mark.parametrize("url", ["http://u:p@127.0.0.1:9", "ftp://127.0.0.1", "http://127.0.0.1:9\r\nX: y",
                                 "http://", "http://127.0.0.1:99999"])
def test_register_refuses_bad_urls(fleet, url):
    from biofleet.errors import FleetError

    with pytest.raises(FleetError, match="URL"):
        register_endpoint(fleet, "ext", url, ["x"])


def test_register_through_the_cli_says_what_is_wrong(fleet, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "biofleet.cli.main", "register", "../state", "http://127.0.0.1:9",
                        "--profile", str(tmp_path / "p.yaml"), "--backend", "local"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "NAME" in r.stderr and "'../state'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (Path(fleet.paths.root) / "state.json").exists()


def test_secrets_are_forced_private_even_when_they_exist(fleet):
    prepare_fleet_dir(fleet)
    os.chmod(fleet.paths.secrets, 0o755)
    os.chmod(fleet.paths.token, 0o644)
    token = Path(fleet.paths.token).read_text()
    prepare_fleet_dir(fleet)
    assert stat.S_IMODE(os.stat(fleet.paths.secrets).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(fleet.paths.token).st_mode) == 0o600
    assert Path(fleet.paths.token).read_text() == token  # kept, not replaced


def test_profile_paths_name_variables_the_script_would_not_expand(tmp_path):
    from biofleet.errors import ProfileError

    ref = tmp_path / "p.yaml"
    ref.write_text("extends: cpu-demo\nname: v\ncluster:\n  workdir: /scratch/$USERX/fleets\n")
    with pytest.raises(ProfileError) as err:
        load_profile(ref)
    msg = str(err.value)
    assert "cluster.workdir" in msg and "$USERX" in msg and "${USER}X" in msg, msg


@pytest.mark.ssh
def test_remote_reading_skips_the_same_files(sshd_server, tmp_path):
    """Over SSH the registry is read by one command on the login node: the same rules hold there."""
    from biofleet.remote.ssh import SSHRunner

    reg = tmp_path / "registry"
    reg.mkdir()
    write(reg, "coder-0.12_0.json", GOOD)
    os.mkfifo(reg / "fifo.json")
    (reg / "zero.json").symlink_to("/dev/zero")
    (reg / "big.json").write_text("x" * 2000)
    with SSHRunner("127.0.0.1", user=sshd_server.user, port=sshd_server.port, key_file=sshd_server.key_file,
                   known_hosts=sshd_server.known_hosts) as runner:
        skipped: list[str] = []
        texts = runner.read_small_files(str(reg), ".json", 1000, 10, skipped)
        beyond: list[str] = []
        runner.read_small_files(str(reg), ".json", 1000, 2, beyond)
    assert [json.loads(t)["server"] for t in texts] == ["coder-0"]
    # what was passed over is said, the same way here and there
    local: list[str] = []
    assert read_small_files(str(reg), ".json", 1000, 10, local) == texts
    assert skipped == local == ["'big.json': larger than 1000 bytes", "'fifo.json': not a regular file",
                                "'zero.json': not a regular file"]
    local_beyond: list[str] = []
    read_small_files(str(reg), ".json", 1000, 2, local_beyond)
    assert beyond == local_beyond == ["'big.json': larger than 1000 bytes", "2 more file(s) beyond the first 2"]
