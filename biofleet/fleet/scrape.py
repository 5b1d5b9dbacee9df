"""Prometheus scrape configuration for a fleet.

Prometheus' file-based service discovery re-reads a JSON targets file whenever it
changes, so the configuration is written once and the targets file follows the
registry (``biofleet scrape-config --watch`` rewrites it atomically on change).
Servers expose vLLM's ``/metrics``; the proxy exposes its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

import yaml

from biofleet.registry import Endpoint


def targets(fleet: str, endpoints: Sequence[Endpoint], proxy_url: str | None = None) -> list[dict]:
    """File-SD target groups: one per server (its labels differ), one for the proxy."""
    groups = []
    for ep in sorted(endpoints, key=lambda e: e.key):
        groups.append({
            "targets": [urlsplit(ep.url).netloc],
            "labels": {
                "fleet": fleet, "server": ep.server, "served_names": ",".join(ep.served_names),
                "engine": ep.engine, "kind": ep.kind, "job_id": ep.job_id or "", "role": "server",
            },
        })
    if proxy_url:
        groups.append({"targets": [urlsplit(proxy_url).netloc], "labels": {"fleet": fleet, "role": "proxy"}})
    return groups


def scrape_config(fleet: str, targets_file: str, interval_s: int = 15, token_file: str | None = None) -> str:
    """``scrape_configs`` entries to add to prometheus.yml (or to include from it): one job for the
    servers, one for the proxy, whose ``/metrics`` needs the fleet's token when it has one
    (``token_file``: a file holding it, which Prometheus reads as ``credentials_file``)."""
    def job(name: str, role_action: str) -> dict:
        return {
            "job_name": name,
            "metrics_path": "/metrics",
            "scrape_interval": f"{interval_s}s",
            "file_sd_configs": [{"files": [targets_file], "refresh_interval": "30s"}],
            "relabel_configs": [{"source_labels": ["role"], "regex": "proxy", "action": role_action}],
        }

    proxy = job(f"biofleet-{fleet}-proxy", "keep")
    if token_file is not None:
        proxy["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    cfg = {"scrape_configs": [job(f"biofleet-{fleet}", "drop"), proxy]}
    header = (f"# biofleet fleet {fleet}: add these jobs to prometheus.yml; the targets file follows the\n"
              f"# fleet registry while `biofleet scrape-config --watch` runs.\n")
    if token_file is not None:
        header += (f"# The proxy's /metrics needs the fleet's token: Prometheus reads it from {token_file}\n"
                   f"# (mode 0600: give the user Prometheus runs as read access, nobody else).\n")
    return header + yaml.safe_dump(cfg, sort_keys=False)


def targets_json(groups: list[dict]) -> str:
    return json.dumps(groups, indent=2) + "\n"
