"""SIGHUP makes a running proxy re-read the registry at once (and does not stop it).

The proxy runs as its own process through the same entry point as `biofleet proxy`
(:func:`biofleet.proxy.server.serve`), with a registry poll interval of an hour, so a
record that shows up within the test can only have been read because of the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
from proxy_helpers import free_port, wait_until

from biofleet.registry import Endpoint, write_record

_SERVE = """
import sys
from pathlib import Path
from biofleet.proxy.config import ProxyConfig
from biofleet.proxy.server import serve
serve(ProxyConfig(registry_dir=Path(sys.argv[1]), port=int(sys.argv[2]), discovery_interval_s=3600))
"""


def test_sighup_reloads(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    port = free_port()
    log_path = tmp_path / "proxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(reg), str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def models() -> dict:
        return httpx.get(f"{url}/health", timeout=2).json()["models"]

    try:
        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                models()
                return True
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=15, what="proxy start")
        write_record(reg, Endpoint(fleet="f", server="x", url="http://127.0.0.1:9", served_names=("x",)))
        assert "x" not in models()  # the next poll is an hour away
        os.kill(proc.pid, signal.SIGHUP)
        try:
            wait_until(lambda: "x" in models(), timeout=10, what="reload on SIGHUP")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; proxy log:\n{log_path.read_text()}") from None
        assert b"SIGHUP: reloading" in log_path.read_bytes()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)
