"""`modelplane-server download` against the local hub: what lands on disk, what is fetched, and
the one-line reason each failure class ends with."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from hfserver import HubFile, HubServer
from modelplane_server.cachedir import CacheDir
from modelplane_server.cli import main
from modelplane_server.download import (
    AUTH,
    NETWORK,
    NOT_FOUND,
    OUT_OF_SPACE,
    DownloadError,
    DownloadRequest,
    backoff_delays,
    classify,
    download,
    parse_request,
)

from .conftest import SMOLLM2, SMOLLM2_GGUF, TINY

FAST_RETRIES = ["--backoff-seconds=0", "--max-backoff-seconds=0"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["download", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def progress_of(target: Path) -> dict[str, object]:
    progress: dict[str, object] = json.loads(CacheDir(target).progress_path.read_text())
    return progress


def test_downloads_every_file_verified_with_a_manifest(
    hub: HubServer, tiny_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, f"hf://{TINY}", str(tmp_path / "cache"))
    assert (code, err) == (0, [])
    for name, source in tiny_files.items():
        assert (tmp_path / "cache" / name).read_bytes() == source.read_bytes()
        assert len(hub.fetches(TINY, name)) == 1
    manifest = CacheDir(tmp_path / "cache").read_manifest()
    assert manifest is not None
    total = sum(p.stat().st_size for p in tiny_files.values())
    assert manifest["commit"] == hub.repos[TINY].commit
    assert manifest["totalBytes"] == total
    weights = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    assert set(weights) == {"path", "size", "sha256"}
    progress = progress_of(tmp_path / "cache")
    assert progress["phase"] == "Complete"
    assert (progress["bytesDone"], progress["bytesTotal"], progress["filesDone"]) == (
        total,
        total,
        3,
    )
    assert out[-1].startswith(f"downloaded {TINY}@{hub.repos[TINY].commit}: 3 files")


def test_a_second_run_fetches_nothing_again(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, f"hf://{TINY}", str(tmp_path))[0] == 0
    fetched = len(hub.log)
    assert run(capsys, f"hf://{TINY}", str(tmp_path))[0] == 0
    assert [a for a in hub.log[fetched:] if "/resolve/" in a.path] == []


def test_a_tampered_file_is_fetched_again(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, f"hf://{TINY}", str(tmp_path))[0] == 0
    (tmp_path / "config.json").write_text('{"model_type": "tinx"}\n')  # same size
    CacheDir(tmp_path).manifest_path.unlink()
    assert run(capsys, f"hf://{TINY}", str(tmp_path))[0] == 0
    assert len(hub.fetches(TINY, "config.json")) == 2
    assert len(hub.fetches(TINY, "model.safetensors")) == 1


def test_a_new_commit_drops_the_manifest_until_it_is_complete(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert run(capsys, f"hf://{TINY}", str(cache))[0] == 0
    new_weights = tmp_path / "v2.safetensors"
    new_weights.write_bytes(bytes(reversed(range(256))) * 1200)
    repo = hub.repos[TINY]
    files = tuple(f for f in repo.files if f.path != "model.safetensors")
    hub.repos[TINY] = dataclasses.replace(
        repo, commit="f" * 40, files=(*files, HubFile("model.safetensors", new_weights))
    )
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = 1000, 1
    assert run(capsys, f"hf://{TINY}", str(cache), "--attempts=1")[0] == NETWORK.exit_code
    assert CacheDir(cache).read_manifest() is None  # resolved to a new commit, not complete
    assert run(capsys, f"hf://{TINY}", str(cache))[0] == 0
    manifest = CacheDir(cache).read_manifest()
    assert manifest is not None
    assert manifest["commit"] == "f" * 40
    assert (cache / "model.safetensors").read_bytes() == new_weights.read_bytes()
    assert len(hub.fetches(TINY, "config.json")) == 1  # unchanged content: not fetched again


@pytest.mark.slow
def test_the_embedded_smollm2_gguf_alone(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, f"hf://{SMOLLM2}", str(tmp_path), f"--gguf-file={SMOLLM2_GGUF}")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".modelplane", SMOLLM2_GGUF]
    source = hub.repos[SMOLLM2].file(SMOLLM2_GGUF)
    assert source is not None
    assert (tmp_path / SMOLLM2_GGUF).stat().st_size == source.size


def test_include_patterns_choose_files(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(
        capsys, f"hf://{TINY}", str(tmp_path), "--include=*.json", "--include=nested/*"
    )
    assert code == 0
    assert hub.fetches(TINY, "model.safetensors") == []
    assert (tmp_path / "nested" / "notes.txt").is_file()


def test_a_restarted_download_continues_the_partial_file(
    hub: HubServer, tiny_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = 100_000, 1
    code, _, err = run(
        capsys, f"hf://{TINY}", str(tmp_path), "--include=*.safetensors", "--attempts=1"
    )
    assert code == NETWORK.exit_code
    assert len(err) == 1
    assert err[0].startswith("NetworkError: ")
    assert progress_of(tmp_path)["phase"] == "Failed"
    assert not (tmp_path / "model.safetensors").exists()

    code, _, _ = run(capsys, f"hf://{TINY}", str(tmp_path), "--include=*.safetensors")
    assert code == 0
    first, second = hub.fetches(TINY, "model.safetensors")
    assert (first.range, first.body_bytes) == (None, 100_000)
    assert second.range == "bytes=100000-"
    assert (tmp_path / "model.safetensors").read_bytes() == tiny_files[
        "model.safetensors"
    ].read_bytes()


def test_network_failures_are_retried_with_bounded_backoff(hub: HubServer, tmp_path: Path) -> None:
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = 50_000, 2
    waits: list[float] = []
    request = DownloadRequest(
        repo=TINY,
        revision="main",
        target=tmp_path,
        endpoint=hub.endpoint,
        attempts=3,
        backoff_seconds=2,
        max_backoff_seconds=3,
    )
    manifest = download(request, sleep=waits.append)
    assert waits == [2, 3]
    assert manifest["commit"] == hub.repos[TINY].commit
    ranges = [a.range for a in hub.fetches(TINY, "model.safetensors")]
    assert ranges == [None, "bytes=50000-", "bytes=100000-"]
    assert list(backoff_delays(DownloadRequest(TINY, "main", tmp_path, attempts=6))) == [
        1,
        2,
        4,
        8,
        16,
    ]


def test_network_failure_after_the_last_attempt(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    hub: HubServer,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    code, out, err = run(capsys, f"hf://{TINY}", str(tmp_path), "--attempts=2", *FAST_RETRIES)
    assert code == NETWORK.exit_code
    assert [line for line in out if line.startswith("attempt 1 failed: NetworkError")]
    assert len(err) == 1
    assert err[0].startswith("NetworkError: ConnectError")
    assert progress_of(tmp_path)["attempt"] == 2


def test_offline_mode_fails_at_once(
    hub: HubServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = run(capsys, f"hf://{TINY}", str(tmp_path), "--attempts=3")
    assert code == NETWORK.exit_code
    assert err == [
        "NetworkError: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; the download needs the hub"
    ]
    assert not [line for line in out if line.startswith("attempt ")]  # not retried
    assert hub.log == []


def test_missing_token_is_an_auth_failure_and_a_token_file_fixes_it(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.behaviour.token = "secret"
    code, _, err = run(capsys, f"hf://{TINY}", str(tmp_path / "cache"))
    assert code == AUTH.exit_code
    assert len(err) == 1
    assert err[0].startswith("AuthFailed: ")
    assert len(hub.log) == 1  # not retried
    token = tmp_path / "token"
    token.write_text("secret\n")
    assert run(capsys, f"hf://{TINY}", str(tmp_path / "cache"), f"--token-file={token}")[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["hf://nobody/nothing"],
        [f"hf://{TINY}", "--revision=no-such-branch"],
        [f"hf://{TINY}", "--gguf-file=missing.gguf"],
        [f"hf://{TINY}", "--include=*.gguf"],
    ],
)
def test_not_found(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = run(capsys, argv[0], str(tmp_path), *argv[1:])
    assert code == NOT_FOUND.exit_code
    assert len(err) == 1
    assert err[0].startswith("NotFound: ")
    assert [a for a in hub.log if "/resolve/" in a.path] == []


def test_a_volume_too_small_fails_before_fetching(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, f"hf://{TINY}", str(tmp_path), "--capacity-bytes=1000")
    assert code == OUT_OF_SPACE.exit_code
    assert len(err) == 1
    assert err[0].startswith("OutOfSpace: the model is ")
    assert [a for a in hub.log if "/resolve/" in a.path] == []
    assert progress_of(tmp_path)["reason"] == "OutOfSpace"


def test_a_full_disk_while_writing_is_out_of_space() -> None:
    failure = classify(OSError(errno.ENOSPC, "No space left on device", "/cache/x.part"))
    assert failure is not None
    assert failure.line == "OutOfSpace: No space left on device: /cache/x.part"
    assert isinstance(DownloadError(AUTH, "a\nb"), DownloadError)
    assert DownloadError(AUTH, "a\nb").line == "AuthFailed: a b"


def test_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1/")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    request = parse_request(["hf://org/repo", str(tmp_path), "--revision=v1", "--capacity-bytes=5"])
    assert (request.repo, request.revision, request.endpoint) == (
        "org/repo",
        "v1",
        "http://127.0.0.1:1",
    )
    assert (request.token, request.capacity_bytes) == ("from-env", 5)
    with pytest.raises(SystemExit):
        parse_request(["hf://no-org", str(tmp_path)])


def test_progress_shows_while_a_throttled_download_runs(hub: HubServer, tmp_path: Path) -> None:
    hub.behaviour.bytes_per_second = 150_000  # the ~300 KB weights take about 2 s
    request = DownloadRequest(repo=TINY, revision="main", target=tmp_path, endpoint=hub.endpoint)
    seen: list[dict[str, object]] = []
    worker = threading.Thread(target=download, args=(request,))
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        if CacheDir(tmp_path).progress_path.is_file():
            seen.append(progress_of(tmp_path))
        time.sleep(0.05)
    worker.join()
    elapsed = time.monotonic() - started
    total = sum(f.size for f in hub.repos[TINY].files)
    midway = [
        p for p in seen if p["phase"] == "Downloading" and 0 < int(str(p["bytesDone"])) < total
    ]
    assert midway, seen
    assert all(p["bytesTotal"] == total for p in midway)
    assert elapsed >= 300_000 / 150_000 * 0.9  # the throttle held
    assert progress_of(tmp_path)["phase"] == "Complete"


def test_as_a_process_with_a_jobs_environment(hub: HubServer, tmp_path: Path) -> None:
    """What a download Job's container runs: its own process, the image's HF_HUB_OFFLINE lifted
    by the Job's env, one line on stderr at the end, and no torch imported on the way."""
    script = (
        "import sys; from modelplane_server.cli import main; code = main(sys.argv[1:]); "
        "sys.exit(100 if 'torch' in sys.modules else code)"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    argv = [sys.executable, "-c", script, "download", "hf://nobody/nothing", str(tmp_path / "c")]
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert failed.returncode == NOT_FOUND.exit_code
    assert failed.stderr.splitlines()[-1].startswith("NotFound: ")
    argv[4] = f"hf://{TINY}"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"downloaded {TINY}@")
    assert [a.path for a in hub.log if "agent-harnesses" in a.path] == []
