"""`biofleet profiles show` on a fleet whose jobs have no GPU (found by mypy: job.gpu may be None)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from biofleet.cli.main import app

runner = CliRunner()


def test_show_cpu_only_profile():
    r = runner.invoke(app, ["profiles", "show", "cpu-demo", "--json"])
    assert r.exit_code == 0, r.output
    servers = json.loads(r.stdout)["servers"]
    assert {s["server"] for s in servers} == {"coder-0", "coder-1", "math", "embeddings"}
    assert all(s["gpu"] is None and s["gpus"] == [] for s in servers)  # no GPU index on a CPU node

    r = runner.invoke(app, ["profiles", "show", "cpu-demo"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if line.startswith("misc ") and " embeddings " in line)
    assert row.split()[1] == "cpu"
    assert "BAAI/bge-m3 (mock) [embed]" in row  # escaped, not eaten as rich markup
    assert r.stdout.rstrip().endswith("no GPU, 4 servers, est. $0/month")
