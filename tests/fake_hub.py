"""A Hugging Face Hub on loopback, so tests run the user's online code path (`load_dataset("<hub id>")`) offline.

The server answers the hub API calls that `huggingface_hub` and `datasets` make (file resolve with HEAD/GET and
ranges, repo info, tree listing, paths-info) from in-memory repositories laid out as the real ones are (README
with `configs:` YAML, parquet or jsonl.gz files under the repository's own paths), filled with slices of the
shared test data. Stages run in a subprocess whose HF_ENDPOINT is this server and whose HTTP proxy is the same
server, so even the dataset-viewer host that `datasets` asks (datasets-server.<endpoint>) reaches loopback
without a DNS lookup; nothing leaves 127.0.0.1.

`fail_reads[path] = n` cuts the next n downloads of that file after half of its bytes, to test resumption.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
API = re.compile(r"^/api/(datasets|models)/([^/]+/[^/]+)/(revision|tree|paths-info)/([^/]+)/?(.*)$")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "LUMI_DATA_DIR")

Repo = dict[str, bytes]


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def readme(configs: dict[str, dict[str, str]] | None = None) -> bytes:
    """A dataset card; `configs` maps config name -> {split: data file glob}, as converted hub repos declare."""
    lines = ["---", "license: other"]
    if configs:
        lines.append("configs:")
        for name, splits in configs.items():
            lines += [f"- config_name: {name}", "  data_files:"]
            lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return ("\n".join(lines + ["---", "# test copy", ""])).encode()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.fail_reads: dict[str, int] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_dataset(self, repo_id: str, files: Repo) -> None:
        self.repos[("datasets", repo_id)] = files

    def add_model(self, repo_id: str, files: Repo) -> None:
        self.repos[("models", repo_id)] = files

    def env(self, hf_home: Path) -> dict[str, str]:
        """The environment of a stage run against this hub: online, own cache, all HTTP through loopback."""
        env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES}
        env.update(HF_HOME=str(hf_home), HF_ENDPOINT=self.url, HTTP_PROXY=self.url, http_proxy=self.url,
                   NO_PROXY="", no_proxy="", HF_HUB_DISABLE_TELEMETRY="1")
        return env

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                hub.requests.append(f"{self.command} {self.path}")

            def do_HEAD(self) -> None:
                hub._answer(self)

            do_GET = do_POST = do_HEAD

        return Handler

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(request.path).path)
        body = request.rfile.read(int(request.headers.get("Content-Length", 0))) if request.command == "POST" else b""
        if match := RESOLVE.match(path):
            kind = "datasets" if match.group(1) else "models"
            return self._resolve(request, self.repos.get((kind, match.group(2))), match.group(4))
        if match := API.match(path):
            kind, repo_id, what, _, sub = match.groups()
            repo = self.repos.get((kind, repo_id))
            if repo is None:
                return _json(request, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            return _json(request, _api_answer(repo_id, repo, what, sub.strip("/"), request.path, body))
        _json(request, {"error": "not found"}, 404)

    def _resolve(self, request: BaseHTTPRequestHandler, repo: Repo | None, name: str) -> None:
        if repo is None:
            return _json(request, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
        if name not in repo:
            return _json(request, {"error": "Entry not found"}, 404,
                         {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = repo[name]
        start = _range_start(request.headers.get("Range"))
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT,
                   "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        cut = request.command == "GET" and self.fail_reads.get(name, 0) > 0
        if cut:
            self.fail_reads[name] -= 1
        _send(request, status, data[start:], headers, cut_after=(len(data) - start) // 2 if cut else None)


def _range_start(header: str | None) -> int:
    match = re.match(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0


def _entry(repo: Repo, path: str) -> dict[str, Any]:
    if path in repo:
        return {"type": "file", "path": path, "size": len(repo[path]), "oid": hashlib.sha1(repo[path]).hexdigest()}
    return {"type": "directory", "path": path, "oid": "0" * 40}


def _api_answer(repo_id: str, repo: Repo, what: str, prefix: str, raw_path: str, body: bytes) -> Any:
    if what == "revision":
        return {"id": repo_id, "sha": COMMIT, "private": False, "siblings": [{"rfilename": p} for p in repo]}
    if what == "paths-info":
        form = urllib.parse.parse_qs(body.decode())
        paths = form.get("paths") or json.loads(body or b"{}").get("paths", [])
        return [_entry(repo, p) for p in paths if p in repo or any(k.startswith(p.rstrip("/") + "/") for k in repo)]
    recursive = "recursive=true" in raw_path.lower()
    entries: dict[str, dict[str, Any]] = {}
    for name in sorted(repo):
        if prefix and not name.startswith(prefix + "/"):
            continue
        parts = name[len(prefix) + 1:].split("/") if prefix else name.split("/")
        for depth in range(1, len(parts) + 1):
            if depth > 1 and not recursive:
                break
            sub = "/".join(([prefix] if prefix else []) + parts[:depth])
            entries.setdefault(sub, _entry(repo, sub))
    return list(entries.values())


def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
          cut_after: int | None = None) -> None:
    request.send_response(status)
    for key, value in headers.items():
        request.send_header(key, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command == "HEAD":
        return
    if cut_after is None:
        request.wfile.write(body)
        return
    request.wfile.write(body[:cut_after])  # then drop the connection: an interrupted download
    request.wfile.flush()
    request.close_connection = True
    request.connection.shutdown(2)


def _json(request: BaseHTTPRequestHandler, payload: Any, status: int = 200,
          headers: dict[str, str] | None = None) -> None:
    _send(request, status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


@contextmanager
def running_hub() -> Iterator[FakeHub]:
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()
