"""Where everything of a fleet lives on the cluster side (pure: strings, no I/O).

    <workdir>/<fleet>/
        state.json        job ids up submitted (down cancels exactly these)
        routing.json      the proxy's routing table, written at up
        proxy.json        where the proxy listens (written by the proxy job / up)
        elastic.json      elastic servers: what the proxy's controller scales (written by up)
        elastic-state.json  the controller's journal: its replicas, decisions, held requests
        scripts/          rendered sbatch scripts
        logs/             SLURM output and one log per server
        registry/         one JSON record per live server (see biofleet.registry)
        servers/          one supervision record per server of a running task (state, restarts,
                          last exit code), written by the job script
        control/          requests to a running job (``<server>.<job key>.restart``), written by up
        secrets/          proxy.token, backend.key (mode 0600, read by jobs at start)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from biofleet.profile import ProxySettings

PROXY_MODULE = "biofleet.cli.main"  # `python -m biofleet.cli.main proxy ...` runs the proxy


@dataclass(frozen=True)
class FleetPaths:
    root: str  # absolute, on the cluster side (posix)

    def _p(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    @property
    def scripts(self) -> str:
        return self._p("scripts")

    @property
    def logs(self) -> str:
        return self._p("logs")

    @property
    def registry(self) -> str:
        return self._p("registry")

    @property
    def servers(self) -> str:
        return self._p("servers")

    @property
    def control(self) -> str:
        return self._p("control")

    @property
    def secrets(self) -> str:
        return self._p("secrets")

    @property
    def state(self) -> str:
        return self._p("state.json")

    @property
    def routing(self) -> str:
        return self._p("routing.json")

    @property
    def proxy_record(self) -> str:
        return self._p("proxy.json")

    @property
    def elastic_plan(self) -> str:
        return self._p("elastic.json")

    @property
    def elastic_state(self) -> str:
        return self._p("elastic-state.json")

    @property
    def token(self) -> str:
        return self._p("secrets", "proxy.token")

    @property
    def backend_key(self) -> str:
        return self._p("secrets", "backend.key")

    def script(self, job: str) -> str:
        return self._p("scripts", f"{job}.sbatch")

    def server_log(self, server: str, job_key: str) -> str:
        return self._p("logs", f"{server}.{job_key}.log")

    def restart_request(self, server: str, job_key: str) -> str:
        return self._p("control", f"{server}.{job_key}.restart")

    def proxy_args(self, host: str, port: str, settings: ProxySettings, *, elastic: bool = False) -> list[str]:
        """The arguments of ``biofleet proxy`` serving this fleet: one definition for the proxy job
        and for a proxy started on this machine, with the timeouts and limits of the profile's
        ``proxy:`` (``settings``). ``elastic``: the fleet has elastic servers, which the proxy's
        controller scales (``--elastic`` names the plan ``up`` wrote)."""
        return ["proxy", "--registry", self.registry, "--routing", self.routing, "--host", host, "--port", port,
                "--token-file", self.token, "--backend-key-file", self.backend_key, *settings.proxy_flags(),
                *(["--elastic", self.elastic_plan] if elastic else [])]
