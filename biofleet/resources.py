"""Where shipped templates and profiles live.

In a wheel they are copied to ``biofleet/_data``; in a source checkout (editable
install, or running from the repo) they sit at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    packaged = _PKG / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PKG.parent / name


def templates_dir() -> Path:
    return data_dir("templates")


def profiles_dir() -> Path:
    return data_dir("profiles")
