"""``biofleet up | status | down | logs | register | unregister | token``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from biofleet.cli.output import console, print_json

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    from biofleet.fleet import Fleet, FleetStatus
    from biofleet.fleet.state import FleetState
    from biofleet.remote.base import Runner

ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", "-p",
    help="Shipped profile name or YAML path (default: $BIOFLEET_PROFILE, else the last one used with up).")]
SshOpt = Annotated[str | None, typer.Option("--ssh", help="Run SLURM commands on this login node: user@host[:port].")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-new-host", help="Accept and record an SSH host key not yet in known_hosts.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="slurm, local (run jobs as local processes) or auto.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output only.")]

def _last_file() -> Path:
    """Where ``up`` records the profile that commands without --profile then use (read when needed, so that
    XDG_STATE_HOME set after import counts: the test suite keeps it off the user's own record)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "biofleet" / "last-profile"


def _profile_ref(ref: str | None) -> str:
    from biofleet.errors import FleetError

    ref = ref or os.environ.get("BIOFLEET_PROFILE")
    if ref:
        return ref
    last = _last_file()
    if last.exists():
        return last.read_text().strip()
    raise FleetError("which fleet? give --profile NAME|FILE (or set BIOFLEET_PROFILE)")


def _remember(ref: str) -> None:
    try:
        last = _last_file()
        last.parent.mkdir(parents=True, exist_ok=True)
        path = Path(ref)
        last.write_text(str(path.resolve()) if path.is_file() else ref)
    except OSError:
        pass


def _open(ref: str, ssh: str | None, trust: bool, backend: str) -> Fleet:
    from biofleet.fleet import open_fleet
    from biofleet.profile import load_profile

    return open_fleet(load_profile(ref), backend=backend, ssh=ssh, trust_new_host=trust)


def up(
    profile: ProfileOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="Wait until every server answers (default) or return after submitting.")] = True,
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for READY before giving up (jobs keep running).")] = 1800,
    force: Annotated[bool, typer.Option(
        "--force", help="Submit even when the fit-check finds errors (they are printed).")] = False,
    proxy: Annotated[str | None, typer.Option(
        "--proxy", help="slurm (a job on the CPU partition), local (a process here) or none. Default: the profile's "
        "proxy.run.")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Override every server's engine, e.g. mock to dry-run the plumbing without GPUs.")] = None,
    renew: Annotated[bool, typer.Option(
        "--renew", help="Replace servers whose job ends within renew_margin: start the new task, drain the old one "
        "once the new is READY (profile needs renew: true).")] = False,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit the fleet, wait until every server is READY, start the proxy.

    Running up again reconciles: only servers that are missing or failed are resubmitted.

    Elastic servers (replicas: {min: 0, max: 4} in the profile) are submitted by the controller
    in the proxy, not by up: up writes their plan, starts the proxy and waits for their min replicas;
    more start when requests come (held meanwhile) and idle ones are released.

    Examples:

      biofleet up --profile t4x10

      biofleet up --profile cpu-demo --backend local     # no SLURM needed

      biofleet up --profile t4x10 --engine mock --no-wait   # plumbing dry run

      biofleet up --profile cpu-demo-elastic --backend local   # an elastic coder, 0..3 replicas
    """
    from biofleet.fleet import ServerState
    from biofleet.fleet import up as do_up

    ref = _profile_ref(profile)
    out = console(stderr=json_out)
    fleet = _open(ref, ssh, trust_new_host, backend)
    with fleet:
        _remember(ref)
        out.print(f"fleet {fleet.profile.name}: {fleet.backend} backend, directory {fleet.paths.root}")
        emit, on_status, finish = _progress(out, json_out)
        try:
            result = do_up(fleet, profile_ref=ref, wait=wait, timeout=timeout, proxy_mode=proxy, engine=engine,
                           force=force, on_event=emit, on_status=on_status, renew=renew)
        finally:
            finish()
        status = result.status
        if json_out:
            print_json({"fleet": fleet.profile.name, "fleet_dir": fleet.paths.root, "backend": fleet.backend,
                        "submitted": [r.model_dump() for r in result.submitted], "kept": result.kept,
                        "timed_out": result.timed_out, "fit_errors": result.fit_errors,
                        "status": status.to_json_dict() if status else None})
        else:
            if status is not None:
                _status_table(out, status)
            _endpoint_hint(out, fleet, result.state)
        if status is None:
            return
        if result.timed_out:
            missing = [s.name for s in status.fixed if s.state != ServerState.READY]
            missing += [f"{e.server} (elastic, {e.ready} of min {e.min} ready)" for e in status.elastic
                        if e.ready < e.min]
            out.print(f"[yellow]timed out after {timeout:g}s; not ready: {', '.join(missing)}[/yellow] "
                      "(jobs keep running; watch with biofleet status --watch)")
            raise typer.Exit(3)
        bad = [f"{s.name} ({s.state})" for s in status.fixed if s.state != ServerState.READY]
        bad += [f"{e.server} (elastic: {e.ready} of min {e.min} ready)" for e in status.elastic if e.ready < e.min]
        if bad:
            out.print(f"[red]not ready: {', '.join(bad)}[/red]; "
                      "see biofleet logs SERVER, then run up again to resubmit")
            raise typer.Exit(1)


def _progress(out: Console, json_out: bool) -> tuple[
        Callable[[str], None], Callable[[FleetStatus], None] | None, Callable[[], None]]:
    """A live table on a terminal; one plain line per change otherwise: (on_event, on_status, finish)."""

    def emit(msg: str) -> None:
        out.print(msg, highlight=False, markup=False)  # above the live table while there is one

    if json_out or not out.is_terminal:
        return emit, None, lambda: None
    from rich.live import Live

    live = Live(console=out, refresh_per_second=4, transient=True)
    live.start()

    def on_status(status: FleetStatus) -> None:
        live.update(_table(status))

    return emit, on_status, live.stop


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


_STATE_STYLE = {"READY": "green", "DRAINING": "magenta",
                "STARTING": "cyan", "RUNNING": "cyan", "PENDING": "yellow", "RESTARTING": "yellow",
                "FAILED": "bold red", "GONE": "red", "STOPPED": "dim", "NOT_SUBMITTED": "dim"}


def _table(status: FleetStatus) -> Table:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, pad_edge=False)
    # Restarts are shown only once some server of the fleet has exited (the table is wide enough).
    restarts = any(s.restarts or s.last_exit is not None for s in status.servers)
    for col in ("server", "model", "job", "node", "state", "address", "health", "run/wait", "KV", "uptime", "left",
                *(("restarts",) if restarts else ())):
        t.add_column(col, no_wrap=col in ("server", "state"))
    for s in status.servers:
        style = _STATE_STYLE.get(s.state, "")
        state = f"[{style}]{s.state}[/{style}]" + (f" {escape(s.reason)}" if s.reason and s.state != "READY" else "")
        rw = "-" if s.running is None else f"{s.running:g}/{(s.waiting or 0):g}"
        kv = "-" if s.kv_cache_usage is None else f"{s.kv_cache_usage * 100:.0f}%"
        addr = s.url.split("://", 1)[-1] if s.url else "-"
        # Text objects, not markup strings: a Live refresh during print(markup=False) would show the tags.
        node = (s.node or "-") + (f" gpu {s.devices}" if s.devices else "")
        cells: list[str | Text] = [
            escape(s.name), escape(s.model), s.job_id or "-", escape(node), Text.from_markup(state), addr,
            escape(s.health or "-"), rw, kv, _fmt_age(s.uptime_s), s.time_left or "-"]
        if restarts:
            cells.append(f"{s.restarts}" + (f" (last exit {s.last_exit})" if s.last_exit is not None else ""))
        t.add_row(*cells)
    return t


def _status_table(out: Console, status: FleetStatus) -> None:
    out.print(_status_view(status))


def _status_view(status: FleetStatus) -> Group:
    """The whole status as one renderable: the table, the proxy, hand-registered endpoints, elastic
    servers, notes and the ready count (what `status` prints, and what `status --watch` refreshes)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    parts: list[Table | Text] = [_table(status)]

    def line(markup: str) -> None:
        parts.append(Text.from_markup(markup))

    px = status.proxy
    if px.run:
        where = f"job {px.job_id}" if px.job_id else "local process"
        line(escape(f"proxy ({where}): {px.state}" + (f" at {px.url}" if px.url else "")
                    + (f" — {px.health}" if px.health else "") + (f" ({px.reason})" if px.reason else "")
                    + (f", time left {px.time_left}" if px.time_left else "")))
        if px.ending_soon:
            from biofleet.fleet import PROXY_ENDING

            line("[yellow]time limit near:[/yellow] "
                 + escape(PROXY_ENDING.format(job=px.job_id, mins=int((px.ends_in_s or 0) // 60))))
    for ep in status.extra_endpoints:
        line(escape(f"registered by hand: {ep['server']} -> {ep['url']} ({', '.join(ep['served_names'])})"))
    for e in status.elastic:
        held = "?" if e.held is None else str(e.held)
        text = (f"[bold]elastic {escape(e.server)}[/bold] ({e.min}..{e.max}): {e.ready} ready, {e.starting} "
                f"starting, {e.pending} pending, {e.draining} draining, {held} held")
        if e.last_cold_start_s is not None:
            text += f"; last cold start {e.last_cold_start_s:.1f}s"
        if e.controller_seen_s is not None and e.controller_seen_s > 120:
            text += f"; [yellow]controller last seen {_fmt_age(e.controller_seen_s)} ago[/yellow]"
        line(text)
        if e.waiting_for:
            line(f"  waiting for: {escape(e.waiting_for)}")
        for d in e.decisions:
            when = time.strftime("%H:%M:%S", time.localtime(d["at"]))
            job = f" job {d['job_id']}" if d.get("job_id") else ""
            line(escape(f"  {when} {d['action']}{job}: {d['reason']}"))
    for note in status.notes:
        line(f"[yellow]note:[/yellow] {escape(note)}")
    ending = [s for s in status.servers if s.ending_soon]
    if ending:
        names = ", ".join(f"{s.name} ({_fmt_age(s.ends_in_s)})" for s in ending)
        line(f"[yellow]time limit near:[/yellow] {escape(names)}; biofleet up --renew starts replacements "
             "before they stop (needs renew: true in the profile)")
    fixed = status.fixed
    line(f"{sum(s.state == 'READY' for s in fixed)}/{len(fixed)} servers ready"
         + (f", {len(status.elastic)} elastic" if status.elastic else ""))
    return Group(*parts)


def _endpoint_hint(out: Console, fleet: Fleet, state: FleetState) -> None:
    if state.proxy is None:
        return
    url = state.proxy.url or "(the proxy job writes its address to " + fleet.paths.proxy_record + ")"
    out.print(f"endpoint: {url}/v1   token: biofleet token --profile {fleet.profile.name} "
              f"(file {fleet.paths.token}, mode 0600)")


def status(
    profile: ProfileOpt = None,
    watch: Annotated[bool, typer.Option(
        "--watch", "-w", help="Refresh until interrupted (Ctrl-C). Into a file or pipe: the status again every "
        "interval, after a time stamp; with --json: one JSON object per line.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with --watch.")] = 2.0,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Scheduler state, registry and HTTP health of every server, and the proxy, in one table.

    Elastic servers: one row per replica (DRAINING: no new requests, cancelled once idle), then per
    server the replicas ready/starting/pending/draining, requests held in the proxy, what they wait
    for (e.g. PENDING (Resources)) and the last scaling decisions with their reasons.

    Example: biofleet status --profile t4x10 --watch
    Example: biofleet status --profile t4x10 --watch --json | jq -c '{ready, total}'
    """
    from biofleet.fleet import collect_status

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    with fleet:
        if not watch:
            st = collect_status(fleet)
            if json_out:
                print_json(st.to_json_dict())
                return
            out = console()
            if not st.submitted:
                out.print(f"fleet {fleet.profile.name} is not up (no state in {fleet.paths.root}); "
                          f"start it with biofleet up --profile {fleet.profile.name}")
                raise typer.Exit(1)
            _status_table(out, st)
            return
        with ctrl_c_stops() as stop:  # Ctrl-C ends a watch: exit 0
            _watch_status(fleet, interval, json_out, stop)


@contextlib.contextmanager
def ctrl_c_stops(active: bool = True) -> Iterator[threading.Event]:
    """An event Ctrl-C (SIGINT) sets, for a loop to end at its next step; a second Ctrl-C ends the block at once.
    Either way the command goes on after the block and exits 0. Not ``active`` (a one-shot command that shares
    the loop), an event nothing sets and Ctrl-C left as it was.

    Where SIGINT was ignored when the command started (a script's background job, nohup), Python never raises
    KeyboardInterrupt, so a watch ran on after `kill -INT` (CI's 20 s hang); and a KeyboardInterrupt that lands
    in asyncio.run's setting up or closing of its loop (each status probe) prints "Exception ignored"
    tracebacks. An event ends the loop between steps, in both cases."""
    import signal

    stop = threading.Event()
    if not active:
        yield stop
        return

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
        installed = True
    except ValueError:  # not the main thread: Ctrl-C stays a KeyboardInterrupt
        installed = False
    try:
        yield stop
    except KeyboardInterrupt:
        pass
    finally:
        if installed:  # None: a handler not set from Python, which the default stands for
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _watch_status(fleet: Fleet, interval: float, json_out: bool, stop: threading.Event) -> None:
    from biofleet.fleet import collect_status

    if json_out:  # JSON lines: one whole status per refresh, for a script to read as it comes
        while not stop.is_set():
            sys.stdout.write(json.dumps(collect_status(fleet).to_json_dict(), default=str) + "\n")
            sys.stdout.flush()
            stop.wait(interval)
        return
    out = console()
    if not out.is_terminal:  # a file or a pipe: a redrawn screen would show nothing until the end
        while not stop.is_set():
            out.rule(time.strftime("%Y-%m-%d %H:%M:%S"), align="left")
            out.print(_status_view(collect_status(fleet)))
            out.file.flush()
            stop.wait(interval)
        return
    from rich.live import Live

    with Live(console=out, refresh_per_second=2) as live:
        while not stop.is_set():
            live.update(_status_view(collect_status(fleet)))
            stop.wait(interval)


def down(
    profile: ProfileOpt = None,
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also delete the fleet directory (logs, scripts, secrets).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs to leave the queue.")] = 120,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Cancel exactly the jobs up submitted (by id, never by name), stop the proxy, clear the registry.

    Logs are kept unless --purge. Safe to run twice, and when the jobs already died. An elastic fleet's
    proxy (its controller) is stopped first, then every replica is cancelled, scale-ups still pending
    included (found by the tag each replica's job carries).

    Example: biofleet down --profile t4x10
    """
    from biofleet.fleet import down as do_down

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    out = console(stderr=json_out)
    with fleet:
        res = do_down(fleet, purge=purge, timeout=timeout,
                      on_event=lambda m: out.print(m, markup=False, highlight=False))
    if json_out:
        print_json({"fleet": fleet.profile.name, "cancelled": res.cancelled, "removed_records": res.removed_records,
                    "purged": res.purged, "was_up": res.had_state})
        return
    if not res.had_state:
        out.print(f"fleet {fleet.profile.name} was not up (no state in {fleet.paths.root}); nothing to cancel")
    else:
        out.print(f"fleet {fleet.profile.name} is down"
                  + ("" if purge else f"; logs kept in {fleet.paths.logs}"))


def logs(
    server: Annotated[str, typer.Argument(
        help="Server name as status shows it (e.g. coder-1), a served name with one replica, or an elastic "
        "server (its newest replica; coder@JOBID for another).")],
    profile: ProfileOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    slurm_output: Annotated[bool, typer.Option(
        "--slurm", help="Show the SLURM output file of the task instead of the server's log.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many lines from the end (0: all).")] = 100,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Print (or follow) the log of the job task running SERVER.

    Example: biofleet logs coder-0 -f
    """
    from biofleet.errors import FleetError
    from biofleet.fleet import log_paths

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    with fleet:
        server_log, slurm_log = log_paths(fleet, server)
        path = slurm_log if slurm_output else server_log
        if not fleet.runner.exists(path):
            raise FleetError(f"no log yet at {path} (the job may still be pending: biofleet status)")
        # following, Ctrl-C ends it (exit 0) from before the first line: a Ctrl-C sent once the first lines show
        # must not land before the handler is in (it was lost where SIGINT started ignored)
        with ctrl_c_stops(active=follow) as stop:
            seen = _last_lines(fleet.runner, path, lines) if lines else 0
            seen = _print_from(fleet.runner, path, seen)
            while follow and not stop.wait(1):
                seen = _print_from(fleet.runner, path, seen)


_LOG_CHUNK = 1 << 20
_MAX_TAIL_BYTES = 16 << 20


def _last_lines(runner: Runner, path: str, n: int) -> int:
    """Print the last ``n`` lines of a log, read from its end (at most 16 MiB back); the offset after them."""
    from biofleet.remote.base import last_lines

    lines, end = last_lines(runner, path, n, most=_MAX_TAIL_BYTES)
    sys.stdout.write("".join(lines[-n:]))
    sys.stdout.flush()
    return end


def _print_from(runner: Runner, path: str, offset: int) -> int:
    """Print a log from byte ``offset`` to its current end, a chunk at a time; the offset after. A log
    shorter than ``offset`` was truncated or replaced: it is printed from its start."""
    while True:
        chunk = runner.read_range(path, offset, _LOG_CHUNK)
        if chunk.size < offset:
            offset = 0
            continue
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        if chunk.end == offset or chunk.end >= chunk.size:
            return chunk.end
        offset = chunk.end


def register(
    name: Annotated[str, typer.Argument(help="Name of the endpoint (also its served name unless --served-name).")],
    url: Annotated[str, typer.Argument(help="Base URL, e.g. http://gpu-node-7:8000 (without /v1).")],
    served_name: Annotated[list[str] | None, typer.Option(
        "--served-name", help="Model name(s) it serves; repeatable.")] = None,
    kind: Annotated[str, typer.Option(help="generate or embed.")] = "generate",
    profile: ProfileOpt = None,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Add an endpoint started outside biofleet to the fleet registry, so the proxy routes to it.

    Example: biofleet register big-coder http://h100-03:8000 --served-name coder
    """
    from biofleet.fleet import register_endpoint

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    with fleet:
        ep = register_endpoint(fleet, name, url, served_name or [name], kind)
    console().print(f"registered {ep.server} -> {ep.url} serving {', '.join(ep.served_names)}")


def unregister(
    name: Annotated[str, typer.Argument(help="Name given to biofleet register.")],
    profile: ProfileOpt = None,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Remove an endpoint added with biofleet register.

    Example: biofleet unregister big-coder
    """
    from biofleet.errors import FleetError
    from biofleet.fleet import unregister_endpoint

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    with fleet:
        if not unregister_endpoint(fleet, name):
            raise FleetError(f"no endpoint {name!r} registered by hand in {fleet.paths.registry}")
    console().print(f"unregistered {name}")


def token(
    profile: ProfileOpt = None,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Print the proxy token (clients send it as 'Authorization: Bearer TOKEN').

    Examples:

      biofleet token --profile t4x10

      export OPENAI_API_KEY=$(biofleet token --profile t4x10)
    """
    from biofleet.fleet import read_token

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    with fleet:
        sys.stdout.write(read_token(fleet) + "\n")


def mount(app: typer.Typer) -> None:
    for fn in (up, status, down, logs, register, unregister, token):
        app.command(fn.__name__)(fn)
