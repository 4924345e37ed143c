"""The server as a real process on 127.0.0.1, started the way the container starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str, timeout_s: float = 10) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout_s)

    def stats(self) -> dict[str, object]:
        stats: dict[str, object] = self.get("/stats").json()
        return stats

    def wait_until(self, what: str, predicate: object, timeout_s: float) -> None:
        """Poll `predicate()` (a callable) until it holds or the process dies."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.TransportError):
                if predicate():
                    return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the server exited while waiting for {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def terminate(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without MODELPLANE_* settings, offline, plus `extra`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    environment.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})})
    return environment


@contextlib.contextmanager
def running_server(
    log_dir: Path, *args: str, env: dict[str, str] | None = None, startup_timeout_s: float = 120
) -> Iterator[ServerProcess]:
    """Start `python -m modelplane_server` with `args`, wait for /health/startup, stop it after."""
    port = free_port()
    environment = server_environment(env)
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelplane_server",
                "--host=127.0.0.1",
                f"--port={port}",
                *args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    server = ServerProcess(process, port, log)
    try:
        server.wait_until(
            "/health/startup", lambda: server.get("/health/startup").status_code == 200,
            startup_timeout_s,
        )  # fmt: skip
        yield server
    finally:
        if process.poll() is None:
            server.terminate()
