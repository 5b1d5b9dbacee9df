"""A Hugging Face Hub stand-in on 127.0.0.1, for prefetch tests: the real ``huggingface_hub``
client downloads from it when ``HF_ENDPOINT`` points here.

It speaks the parts of the Hub's HTTP API that ``snapshot_download`` and ``model_info`` use:
repository info (with file sizes), the recursive tree listing, and ``resolve`` with HEAD
metadata (commit, ETag, size) and ranged GETs. Bodies can be sent slowly (``bytes_per_s``)
so a test can watch a download in progress.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], bytes_per_s: float | None = None) -> None:
        self.repos = repos
        self.bytes_per_s = bytes_per_s
        self.gets: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._resolve(self, body=False)

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                if path.startswith("/api/models/"):
                    hub._api(self, path[len("/api/models/"):])
                else:
                    hub._resolve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, obj, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _api(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        # <org>/<name>/revision/<rev>  |  <org>/<name>/tree/<rev>[/<path>]  |  <org>/<name>
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        files = self.repos.get(repo)
        if files is None:
            return _not_found(h, "RepoNotFound")
        if len(parts) >= 3 and parts[2] == "tree":
            self._send_json(h, [{"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                                for name, data in files.items()])
            return
        self._send_json(h, {
            "id": repo, "modelId": repo, "sha": SHA, "private": False, "tags": [],
            "siblings": [{"rfilename": name, "size": len(data), "blobId": _oid(data)} for name, data in files.items()],
        })

    def _resolve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        # /<org>/<name>/resolve/<rev>/<file>
        path = unquote(urlsplit(h.path).path).lstrip("/")
        parts = path.split("/")
        fname = "/".join(parts[4:])
        data = None
        if len(parts) >= 5 and parts[2] == "resolve":
            data = self.repos.get(f"{parts[0]}/{parts[1]}", {}).get(fname)
        if data is None:
            return _not_found(h, "EntryNotFound")
        start = 0
        rng = h.headers.get("Range")
        if body and rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        chunk = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", SHA)
        h.send_header("ETag", f'"{_oid(data)}"')
        h.send_header("Content-Length", str(len(chunk)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        self.gets.append(fname)
        step = 64 * 1024
        for off in range(0, len(chunk), step):
            h.wfile.write(chunk[off:off + step])
            h.wfile.flush()
            if self.bytes_per_s:
                time.sleep(step / self.bytes_per_s)


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _not_found(h: BaseHTTPRequestHandler, code: str) -> None:
    h.send_response(404)
    h.send_header("X-Error-Code", code)  # huggingface_hub turns this into RepositoryNotFoundError etc.
    h.send_header("Content-Length", "0")
    h.end_headers()
