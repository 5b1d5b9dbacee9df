"""A fleet's lifecycle over any runner and scheduler.

* :mod:`.context` — open a fleet: the profile bound to a runner, a scheduler and its directory;
* :mod:`.state` — what ``up`` records (job ids, the proxy) and the records jobs write;
* :mod:`.up` — fit-check, submit, reconcile, renew, wait until the endpoint works;
* :mod:`.status` — scheduler + registry + supervision records + HTTP probes, per server;
* :mod:`.proxy_job` — the proxy as a job or a local process;
* :mod:`.ops` — down, logs, register, token;
* :mod:`.prefetch`, :mod:`.scrape` — model downloads and Prometheus file discovery.

The names below are the library's API; the CLI only parses arguments and formats their results.
"""

from biofleet.fleet.context import Fleet, open_fleet, parse_ssh_target
from biofleet.fleet.ops import (
    DownResult,
    down,
    find_instance,
    log_paths,
    read_token,
    register_endpoint,
    unregister_endpoint,
)
from biofleet.fleet.proxy_job import PROXY_ENDING
from biofleet.fleet.state import load_state, save_state
from biofleet.fleet.status import (
    NEEDS_RESUBMIT,
    SETTLED,
    FleetStatus,
    ProxyStatus,
    ServerState,
    ServerStatus,
    collect_status,
    read_registry,
)
from biofleet.fleet.up import FitRefused, UpResult, fit_errors, prepare_fleet_dir, up, with_engine

__all__ = [
    "NEEDS_RESUBMIT",
    "PROXY_ENDING",
    "SETTLED",
    "DownResult",
    "FitRefused",
    "Fleet",
    "FleetStatus",
    "ProxyStatus",
    "ServerState",
    "ServerStatus",
    "UpResult",
    "collect_status",
    "down",
    "find_instance",
    "fit_errors",
    "load_state",
    "log_paths",
    "open_fleet",
    "parse_ssh_target",
    "prepare_fleet_dir",
    "read_registry",
    "read_token",
    "register_endpoint",
    "save_state",
    "unregister_endpoint",
    "up",
    "with_engine",
]
