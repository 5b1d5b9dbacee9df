"""Every read-only command over every shipped profile, through the real entry point.

A user may run any of these on any profile biofleet ships: each must answer with exit 0
(or 1 for a plan the fit-check refuses), and no message may be a leaked Python exception
(``AttributeError: ...``) instead of a sentence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from biofleet.profile import shipped_profiles

PROFILES = [p.stem for p in shipped_profiles()]
COMMANDS = [
    ["profiles", "list"],
    ["profiles", "list", "--json"],
    *[["profiles", "show", name] for name in PROFILES],
    *[["profiles", "show", name, "--json"] for name in PROFILES],
    *[["fit-check", "--profile", name] for name in PROFILES],
    *[["fit-check", "--profile", name, "--json"] for name in PROFILES],
    *[["render", "--profile", name, "--out", "{tmp}"] for name in PROFILES],
]
HELP = [[], ["profiles"], ["profiles", "list"], ["profiles", "show"], ["fit-check"], ["render"], ["up"], ["status"],
        ["down"], ["logs"], ["register"], ["unregister"], ["token"], ["proxy"], ["cpu-models"], ["prefetch"],
        ["scrape-config"], ["testcluster"], ["testcluster", "start"], ["testcluster", "stop"], ["testcluster", "status"]]

# A Python exception type named in a message: "AttributeError", "KeyError: 'x'", "Traceback (most recent".
_LEAK = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback \(most recent call last\)")


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BIOFLEET_DEBUG"}
    return subprocess.run([sys.executable, "-m", "biofleet.cli.main", *argv], capture_output=True, text=True,
                          env={**env, "COLUMNS": "200"}, timeout=120)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_read_only_command(argv, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    r = run(argv)
    assert r.returncode in (0, 1), f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    leaked = _LEAK.search(r.stdout + r.stderr)
    assert leaked is None, f"a Python exception reached the user: {leaked.group(0)!r}\n{r.stdout}\n{r.stderr}"
    if r.returncode == 1:
        assert r.stdout.strip() or r.stderr.strip(), "exit 1 without saying why"


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a) or "biofleet")
def test_help(argv):
    r = run([*argv, "--help"])
    assert r.returncode == 0, r.stderr
    assert _LEAK.search(r.stdout + r.stderr) is None


def test_shipped_profiles_pass_their_fit_check():
    """Every shipped profile is a plan that starts (exit 0), not one the checker refuses, and starts the first
    time too: none only fits once vLLM's compile cache is warm (first-start-kv-short)."""
    for name in PROFILES:
        r = run(["fit-check", "--profile", name])
        assert r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "first-start-kv-short" not in r.stdout, f"{name}:\n{r.stdout}"
