"""SIGHUP makes a running `biofleet proxy` re-read the registry at once (and does not stop it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from biofleet.registry import Endpoint, write_record


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_reloads(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    port = _port()
    log = open(tmp_path / "proxy.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "biofleet.cli.main", "proxy", "--registry", str(reg),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
                time.sleep(0.1)
        write_record(reg, Endpoint(fleet="f", server="x", url="http://127.0.0.1:9", served_names=("x",)))
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while b"SIGHUP: reloading" not in (tmp_path / "proxy.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
            time.sleep(0.1)
        assert proc.poll() is None
        body = httpx.get(f"{url}/health").json()
        assert "x" in body["models"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
