"""The layout of a model cache directory, which the download command writes and others read.

A cache directory holds the repository's files at their repository paths (so the server loads it
like any local model directory) and, beside them, Modelplane's own bookkeeping under
`.modelplane/`:

- `manifest.json`, written last and only after every file was verified: what is in the directory
  (repository, requested and resolved revision, every file with its size and checksum, the total).
  Its presence means the cache is complete at the commit it names (a download that resolves to
  another commit removes it first).
- `progress.json`, rewritten while the download runs: phase, bytes done and total, and on failure
  the reason and message. An operator (or `cat`) reads it; it is replaced atomically, so a reader
  never sees half a file.
- `partial/<path>.part`: files being downloaded. A restarted download continues from them.

The formats are camelCase JSON so the operator can copy fields into a resource's status as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR = ".modelplane"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
PARTIAL_SUFFIX = ".part"
MANIFEST_VERSION = 1
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it: the checksum is the LFS sha256 when the file is in LFS, else
    the git blob id (sha1 of `blob <size>\\0` and the content)."""

    path: str
    size: int
    sha256: str | None
    blob_id: str

    def as_json(self) -> dict[str, Any]:
        checksum = {"sha256": self.sha256} if self.sha256 else {"gitBlobSha1": self.blob_id}
        return {"path": self.path, "size": self.size, **checksum}


@dataclass(frozen=True)
class CacheDir:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state / MANIFEST

    @property
    def progress_path(self) -> Path:
        return self.state / PROGRESS

    def final_path(self, file: RemoteFile) -> Path:
        return self._inside(self.root, file.path)

    def partial_path(self, file: RemoteFile) -> Path:
        return self._inside(self.state / "partial", file.path + PARTIAL_SUFFIX)

    @staticmethod
    def _inside(base: Path, relative: str) -> Path:
        # Repository paths come from the network: never let one escape the cache directory.
        path = (base / relative).resolve()
        if not path.is_relative_to(base.resolve()):
            raise ValueError(f"repository path {relative!r} points outside the cache directory")
        return path

    def present_bytes(self, file: RemoteFile) -> int:
        """Bytes of `file` already on disk: all of it when final, else the partial's length."""
        final = self.final_path(file)
        if final.is_file():
            return final.stat().st_size
        partial = self.partial_path(file)
        return partial.stat().st_size if partial.is_file() else 0

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest: dict[str, Any] = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        return manifest

    def write_manifest(
        self, *, repo: str, revision: str, commit: str, files: tuple[RemoteFile, ...]
    ) -> None:
        write_json(
            self.manifest_path,
            {
                "version": MANIFEST_VERSION,
                "repo": repo,
                "revision": revision,
                "commit": commit,
                "files": [file.as_json() for file in files],
                "totalBytes": sum(file.size for file in files),
            },
        )

    def write_progress(self, progress: Mapping[str, Any]) -> None:
        write_json(self.progress_path, progress)


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Replace `path` atomically (write a temporary file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(content, out, indent=2, sort_keys=True)
            out.write("\n")
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def checksum_matches(path: Path, file: RemoteFile) -> bool:
    """True when the content at `path` has the checksum the hub lists for `file`."""
    digest = hashlib.sha256() if file.sha256 else hashlib.sha1(usedforsecurity=False)
    if not file.sha256:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as content:
        while chunk := content.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == (file.sha256 or file.blob_id)
