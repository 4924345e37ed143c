"""`modelplane-server download`: fetch one revision of a hub repository into a cache directory.

What a model cache's download job runs, so it is built for an operator to drive and read:

- the revision is resolved to a commit first, and every file is fetched at that commit, so a
  branch moving mid-download cannot mix two commits;
- the space needed is checked before any byte is fetched (free space, and `--capacity-bytes`, the
  capacity of the claim the directory lives on when the filesystem cannot tell);
- files land in `.modelplane/partial/` and a restarted download continues them with a `Range`
  request; a file becomes visible at its final path only once its size and checksum (the LFS
  sha256, or the git blob id) match what the hub lists, and files already there are not fetched
  again;
- network failures are retried with bounded exponential backoff; auth, not-found and out-of-space
  failures are not, since retrying cannot fix them;
- progress goes to `.modelplane/progress.json` (see `cachedir`) and to stdout, and a failure ends
  with exactly one line on stderr, `<Reason>: <message>`, and an exit code per reason, so a Job's
  terminated message (`terminationMessagePolicy: FallbackToLogsOnError`) carries the reason.

Talks to the hub through huggingface_hub (its API client, session and error classes; `HF_ENDPOINT`
picks the hub), but fetches the files itself: huggingface_hub deletes partial files when a process
ends, so its downloads do not survive a restarted pod.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi, get_session, hf_raise_for_status
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile

from modelplane_server.cachedir import CacheDir, RemoteFile, checksum_matches
from modelplane_server.progress_server import serve_progress

DEFAULT_ENDPOINT = "https://huggingface.co"
URI_PREFIX = "hf://"
PROGRESS_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class Reason:
    """A class of failure: the name an operator puts in a condition, and the exit code."""

    name: str
    exit_code: int
    retryable: bool


AUTH = Reason("AuthFailed", 3, retryable=False)
NOT_FOUND = Reason("NotFound", 4, retryable=False)
OUT_OF_SPACE = Reason("OutOfSpace", 5, retryable=False)
NETWORK = Reason("NetworkError", 6, retryable=True)
# Offline mode forbids every request: a network failure that no retry can fix.
OFFLINE = Reason(NETWORK.name, NETWORK.exit_code, retryable=False)
REASONS = (AUTH, NOT_FOUND, OUT_OF_SPACE, NETWORK)


class DownloadError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = " ".join(message.split())  # one line, whatever the hub's message holds

    @property
    def line(self) -> str:
        return f"{self.reason.name}: {self.message}"


@dataclass(frozen=True)
class DownloadRequest:
    repo: str
    revision: str
    target: Path
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    gguf_file: str | None = None
    include: tuple[str, ...] = ()
    capacity_bytes: int | None = None
    attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 30.0
    progress_port: int | None = None
    progress_host: str = "0.0.0.0"  # noqa: S104 - a pod's own address space
    progress_linger_seconds: float = 0.0


def repo_of(uri: str) -> str:
    """`hf://org/repo` (or plain `org/repo`) -> `org/repo`."""
    repo = uri.removeprefix(URI_PREFIX)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"expected hf://<org>/<repo>, got {uri!r}")
    return repo


def selected(files: Sequence[RemoteFile], request: DownloadRequest) -> tuple[RemoteFile, ...]:
    """The files to fetch: the GGUF file alone when one is named, else those matching `include`
    (all files when it is empty)."""
    if request.gguf_file:
        chosen = tuple(f for f in files if f.path == request.gguf_file)
        if not chosen:
            raise DownloadError(
                NOT_FOUND, f"{request.repo} has no file {request.gguf_file!r} at {request.revision}"
            )
        return chosen
    if not request.include:
        return tuple(files)
    chosen = tuple(f for f in files if any(fnmatch.fnmatch(f.path, p) for p in request.include))
    if not chosen:
        patterns = ", ".join(request.include)
        raise DownloadError(NOT_FOUND, f"no file of {request.repo} matches {patterns}")
    return chosen


def backoff_delays(request: DownloadRequest) -> Iterator[float]:
    """The waits between attempts: doubling from `backoff_seconds`, capped, attempts - 1 of them."""
    for retry in range(request.attempts - 1):
        yield min(request.max_backoff_seconds, request.backoff_seconds * 2**retry)


def http_failure(error: HfHubHTTPError) -> DownloadError:
    status = error.response.status_code
    first_line = str(error).splitlines()[0] if str(error) else f"HTTP {status}"
    if status in (401, 403):
        return DownloadError(AUTH, f"{first_line} (is the token missing or without access?)")
    if status == 404:
        return DownloadError(NOT_FOUND, str(error))
    return DownloadError(NETWORK, first_line)  # 5xx, 429: the hub or the path to it


def classify(error: BaseException) -> DownloadError | None:
    """The failure class of an exception raised while talking to the hub or writing files."""
    if isinstance(error, HfHubHTTPError):
        return http_failure(error)
    if isinstance(error, OfflineModeIsEnabled):
        return DownloadError(
            OFFLINE,
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; the download needs the hub",
        )
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(OUT_OF_SPACE, f"{error.strerror}: {error.filename or ''}".strip())
    if isinstance(error, httpx2.TransportError):
        return DownloadError(NETWORK, f"{type(error).__name__}: {error}")
    return None


@contextmanager
def classified() -> Iterator[None]:
    try:
        yield
    except DownloadError:
        raise
    except Exception as error:
        failure = classify(error)
        if failure is None:
            raise
        raise failure from error


@dataclass
class Progress:
    """What the download has done so far, written to progress.json and stdout as it changes."""

    cache: CacheDir
    repo: str
    revision: str
    attempt: int = 1
    phase: str = "Resolving"
    commit: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    reason: str | None = None
    message: str | None = None
    _written_at: float = field(default=float("-inf"), repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
            "filesDone": self.files_done,
            "filesTotal": self.files_total,
            "attempt": self.attempt,
            "reason": self.reason,
            "message": self.message,
            "updatedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def add(self, count: int) -> None:
        self.bytes_done += count
        if time.monotonic() - self._written_at >= PROGRESS_INTERVAL_SECONDS:
            self.write()

    def write(self) -> None:
        self._written_at = time.monotonic()
        self.cache.write_progress(self.as_json())
        if self.phase == "Downloading":
            print(
                f"progress {self.bytes_done}/{self.bytes_total} bytes, "
                f"{self.files_done}/{self.files_total} files",
                flush=True,
            )


def resolve(request: DownloadRequest) -> tuple[str, tuple[RemoteFile, ...]]:
    """The commit the revision names now, and the files to fetch at that commit."""
    api = HfApi(endpoint=request.endpoint, token=request.token or False)
    info = api.model_info(request.repo, revision=request.revision)
    if not info.sha:
        raise DownloadError(NETWORK, f"the hub named no commit for {request.repo}")
    listing = [
        RemoteFile(
            path=entry.path,
            size=entry.size,
            sha256=entry.lfs.sha256 if entry.lfs else None,
            blob_id=entry.blob_id,
        )
        for entry in api.list_repo_tree(request.repo, revision=info.sha, recursive=True)
        if isinstance(entry, RepoFile)
    ]
    return info.sha, selected(listing, request)


def check_space(cache: CacheDir, files: Sequence[RemoteFile], capacity_bytes: int | None) -> None:
    """Fail before fetching when the files cannot fit: in the claim's capacity, or in free space."""
    total = sum(f.size for f in files)
    if capacity_bytes is not None and total > capacity_bytes:
        raise DownloadError(
            OUT_OF_SPACE,
            f"the model is {total} bytes but the volume holds {capacity_bytes} bytes",
        )
    missing = sum(f.size - cache.present_bytes(f) for f in files)
    free = shutil.disk_usage(cache.root).free
    if missing > free:
        raise DownloadError(
            OUT_OF_SPACE,
            f"{missing} more bytes are needed but {cache.root} has {free} bytes free",
        )


def already_there(cache: CacheDir, file: RemoteFile, manifest: dict[str, Any] | None) -> bool:
    """True when the file is at its final path with the right content (checked against the
    manifest's record when there is one, else by hashing it again)."""
    final = cache.final_path(file)
    if not final.is_file() or final.stat().st_size != file.size:
        return False
    if manifest and file.as_json() in manifest.get("files", []):
        return True
    if checksum_matches(final, file):
        return True
    final.unlink()
    return False


def fetch(
    request: DownloadRequest, commit: str, cache: CacheDir, file: RemoteFile, progress: Progress
) -> None:
    """Fetch one file into its partial (continuing it), verify it, move it to its final path."""
    partial = cache.partial_path(file)
    partial.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > file.size:
        progress.add(-offset)
        partial.unlink()
        offset = 0
    if offset < file.size:
        # Built here, not by hf_hub_url: that fills a template made from the endpoint
        # huggingface_hub read at import, which need not be `request.endpoint`.
        url = f"{request.endpoint}/{request.repo}/resolve/{commit}/{quote(file.path)}"
        # Identity: the sizes to check are of the raw bytes.
        headers = {"Accept-Encoding": "identity"}
        if request.token:
            headers["Authorization"] = f"Bearer {request.token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with get_session().stream(
            "GET", url, headers=headers, timeout=request.timeout_seconds, follow_redirects=True
        ) as response:
            hf_raise_for_status(response)
            if offset and response.status_code != 206:  # the server ignored the range
                progress.add(-offset)
                offset = 0
            with partial.open("ab" if offset else "wb") as out:
                # Chunks as they arrive (no re-chunking), so bytes received before a dropped
                # connection reach the partial file and the next try continues after them.
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    progress.add(len(chunk))
    received = partial.stat().st_size
    if received != file.size or not checksum_matches(partial, file):
        progress.add(-received)
        partial.unlink()
        raise DownloadError(
            NETWORK,
            f"{file.path}: received {received} bytes that do not match the hub's size "
            f"{file.size} and checksum; fetching it again",
        )
    final = cache.final_path(file)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(final)


def attempt(request: DownloadRequest, cache: CacheDir, progress: Progress) -> dict[str, Any]:
    with classified():
        commit, files = resolve(request)
        manifest = cache.read_manifest()
        if manifest and manifest.get("commit") != commit:
            # The manifest says "complete"; for another commit that is no longer true.
            cache.manifest_path.unlink()
        progress.commit = commit
        progress.files_total = len(files)
        progress.bytes_total = sum(f.size for f in files)
        progress.bytes_done = sum(cache.present_bytes(f) for f in files)
        progress.files_done = 0
        progress.phase = "Downloading"
        check_space(cache, files, request.capacity_bytes)
        progress.write()
        for file in files:
            if not already_there(cache, file, manifest):
                fetch(request, commit, cache, file, progress)
            progress.files_done += 1
        cache.write_manifest(
            repo=request.repo, revision=request.revision, commit=commit, files=files
        )
    written = cache.read_manifest()
    assert written is not None
    return written


def download(
    request: DownloadRequest, *, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Download with retries; returns the manifest or raises the last `DownloadError`."""
    cache = CacheDir(request.target)
    cache.root.mkdir(parents=True, exist_ok=True)
    progress = Progress(cache, request.repo, request.revision)
    delays = backoff_delays(request)
    while True:
        try:
            manifest = attempt(request, cache, progress)
        except DownloadError as failure:
            delay = next(delays, None) if failure.reason.retryable else None
            progress.phase = "Failed" if delay is None else "Retrying"
            progress.reason, progress.message = failure.reason.name, failure.message
            progress.write()
            if delay is None:
                raise
            print(f"attempt {progress.attempt} failed: {failure.line}; retrying in {delay:g}s")
            sleep(delay)
            progress.attempt += 1
            continue
        progress.phase, progress.reason, progress.message = "Complete", None, None
        progress.write()
        return manifest


def parse_request(argv: Sequence[str]) -> DownloadRequest:
    parser = argparse.ArgumentParser(
        prog="modelplane-server download",
        description="Download one revision of a hub repository into a cache directory: "
        "resumable, verified, with a manifest and progress file under DIR/.modelplane/. "
        "The hub is HF_ENDPOINT (default https://huggingface.co); the token comes from "
        "--token-file or HF_TOKEN. On failure the last line on stderr is "
        f"'<Reason>: <message>' ({', '.join(f'{r.name}: exit {r.exit_code}' for r in REASONS)}).",
    )
    parser.add_argument("uri", help="hf://<org>/<repo>")
    parser.add_argument("target", type=Path, help="the cache directory (created if missing)")
    parser.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    parser.add_argument("--gguf-file", help="fetch only this GGUF file of the repository")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="fetch only files matching this glob (repeatable; default: every file)",
    )
    parser.add_argument("--token-file", type=Path, help="a file holding the hub token")
    parser.add_argument(
        "--capacity-bytes",
        type=int,
        help="the capacity of the volume DIR is on (a claim's size), checked before fetching",
    )
    parser.add_argument("--attempts", type=int, default=5, help="tries in all (5)")
    parser.add_argument(
        "--backoff-seconds", type=float, default=1.0, help="first wait between tries (1)"
    )
    parser.add_argument(
        "--max-backoff-seconds", type=float, default=30.0, help="longest wait between tries (30)"
    )
    parser.add_argument(
        "--timeout-seconds", type=float, default=30.0, help="connect/read timeout (30)"
    )
    parser.add_argument(
        "--progress-port",
        type=int,
        help="serve progress.json at http://HOST:PORT/progress while downloading (the operator "
        "reads it for the ModelCache's status)",
    )
    parser.add_argument(
        "--progress-host",
        default="0.0.0.0",  # noqa: S104 - a pod's own address space
        help="address to serve it on (0.0.0.0)",
    )
    parser.add_argument(
        "--progress-linger-seconds",
        type=float,
        default=0.0,
        help="after a success, keep serving the final progress until it has been read once, at "
        "most this long (so a reader polling every few seconds sees the totals and the commit)",
    )
    args = parser.parse_args(list(argv))
    try:
        repo = repo_of(args.uri)
    except ValueError as error:
        parser.error(str(error))
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("HF_TOKEN")
    return DownloadRequest(
        repo=repo,
        revision=args.revision,
        target=args.target,
        endpoint=os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/"),
        token=token or None,
        gguf_file=args.gguf_file,
        include=tuple(args.include),
        capacity_bytes=args.capacity_bytes,
        attempts=args.attempts,
        backoff_seconds=args.backoff_seconds,
        max_backoff_seconds=args.max_backoff_seconds,
        timeout_seconds=args.timeout_seconds,
        progress_port=args.progress_port,
        progress_host=args.progress_host,
        progress_linger_seconds=args.progress_linger_seconds,
    )


def download_command(argv: Sequence[str]) -> int:
    request = parse_request(argv)
    server = None
    if request.progress_port is not None:
        progress_file = CacheDir(request.target).progress_path
        server = serve_progress(request.progress_host, request.progress_port, progress_file)
    try:
        manifest = download(request)
    except DownloadError as failure:
        print(failure.line, file=sys.stderr, flush=True)
        return failure.reason.exit_code
    print(
        f"downloaded {request.repo}@{manifest['commit']}: {len(manifest['files'])} files, "
        f"{manifest['totalBytes']} bytes in {request.target}",
        flush=True,
    )
    if server is not None:
        # Until a reader has seen the totals and the commit, at most this long.
        server.final_read.wait(request.progress_linger_seconds)
    return 0
