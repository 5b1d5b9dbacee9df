"""The one rule for each kind of name biofleet accepts, wherever it comes from (a profile, the
registry, the command line): server and job names, served model names, endpoint URLs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# A server or job name: also a file name in the registry and a word in job scripts, so no "/",
# no leading dot, no control characters or shell metacharacters.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A served model name: what clients send as "model" (org/name allowed).
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
MAX_URL = 2048


def check_name(value: str, what: str = "name") -> str:
    if not NAME.match(value):
        raise ValueError(f"{shown(value)} is not a valid {what}: letters, digits, '.', '_', '-', at most 64, "
                         "starting with a letter or digit")
    return value


def check_served_name(value: str) -> str:
    if not SERVED_NAME.match(value):
        raise ValueError(f"{shown(value)} is not a valid served model name: letters, digits, '.', '_', ':', '/', "
                         "'-', at most 128, starting with a letter or digit")
    return value


def check_endpoint_url(value: str) -> str:
    """An http(s) base URL with a host, no user:password@, no whitespace or control characters."""
    if len(value) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{shown(value)} is not a valid URL (too long, or whitespace/control characters)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown(value)} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{shown(value)}: credentials in a URL would be logged and sent on; "
                         "use the backend key file instead")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"{shown(value)} has an invalid port") from None
    return value


def shown(value: str, limit: int = 80) -> str:
    """A short, escaped prefix of untrusted input for a message (never the whole of it, never a
    password in a URL)."""
    text = repr(redact_userinfo(value)[:limit])
    return text + ("..." if len(value) > limit else "")


_USERINFO = re.compile(r"(//)[^/@\s'\"]*@")


def redact_userinfo(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://***@host`` anywhere in a message: an error
    about a URL with credentials must not log or print them."""
    return _USERINFO.sub(r"\1***@", text)
