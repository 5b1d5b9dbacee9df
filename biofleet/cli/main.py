"""The ``biofleet`` command: thin Typer commands over the library.

Only this package imports Typer and Rich. Library errors are turned into a
message and an exit code here, once (``BIOFLEET_DEBUG=1`` shows tracebacks).
"""

from __future__ import annotations

import os
import sys

import typer

from biofleet.cli import chores_cmd, fit_cmd, fleet_cmd, profiles_cmd, proxy_cmd, render_cmd, testcluster_cmd

app = typer.Typer(
    name="biofleet",
    help=(
        "Fleets of LLM inference servers (vLLM) on SLURM, behind one OpenAI-compatible endpoint.\n\n"
        "Start with: biofleet profiles list, then biofleet fit-check --profile t4x10."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

app.add_typer(profiles_cmd.app, name="profiles")
app.command("fit-check")(fit_cmd.fit_check)
app.command("render")(render_cmd.render)
fleet_cmd.mount(app)
app.command("proxy")(proxy_cmd.proxy)
chores_cmd.mount(app)
app.add_typer(testcluster_cmd.app, name="testcluster")


def main() -> None:
    from biofleet.errors import BiofleetError

    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except BiofleetError as exc:
        if os.environ.get("BIOFLEET_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a usage error from Click, or a bug
        handled = _usage_error(exc)
        if handled is not None:
            sys.exit(handled)
        if os.environ.get("BIOFLEET_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}\n(set BIOFLEET_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)


def _usage_error(exc: Exception) -> int | None:
    # Typer bundles its own Click; its exceptions expose .show() and .exit_code.
    show = getattr(exc, "show", None)
    code = getattr(exc, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()
        return code
    return None


if __name__ == "__main__":
    main()
