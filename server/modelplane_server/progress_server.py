"""A download's progress over HTTP, for the operator: `GET /progress` answers the cache's
progress.json as it is now (`{}` before the first write). A daemon thread, standard library only:
it lives exactly as long as the download process, which may wait (`ProgressServer.final_read`)
until a reader has seen its final state before it exits."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROGRESS_PATH = "/progress"


def _phase(body: bytes) -> object:
    try:
        return json.loads(body).get("phase")
    except (ValueError, AttributeError):
        return None


class ProgressServer(ThreadingHTTPServer):
    """The HTTP server, and whether a reader has been served a final (Complete) progress."""

    final_read: threading.Event


def serve_progress(host: str, port: int, progress_file: Path) -> ProgressServer:
    """Start serving `progress_file` at http://host:port/progress in a daemon thread."""
    final_read = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != PROGRESS_PATH:
                self.send_error(404)
                return
            try:
                body = progress_file.read_bytes()
            except FileNotFoundError:
                body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if _phase(body) == "Complete":
                final_read.set()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: stdout carries the download's own progress lines."""

    server = ProgressServer((host, port), Handler)
    server.final_read = final_read
    threading.Thread(target=server.serve_forever, name="progress", daemon=True).start()
    return server
