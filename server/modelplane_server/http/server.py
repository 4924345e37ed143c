"""Runs the app under uvicorn in this process and owns its signal handling.

uvicorn's own handlers stop the server on SIGTERM straight away; Kubernetes wants a drain instead.
So uvicorn's signal capture is switched off and ours is installed on the event loop: the first
SIGTERM (or Ctrl-C) starts the drain (readiness 503 and no new work at once, in-flight requests
finish up to `--drain-timeout-s`, the rest end with `abort`) and only then tells uvicorn to exit,
with status 0. A second Ctrl-C forces the exit. A model that fails to load exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from modelplane_server.http.app import create_app
from modelplane_server.settings import ServerSettings

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 5.0  # after our drain, for uvicorn to close idle keep-alive connections


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: ServerSettings) -> int:
    app = create_app(settings)
    state = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        access_log=settings.log_level == "debug",
    )
    server = _Server(config)
    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        logger.error("exiting: %s", reason)
        exit_code = 1
        server.should_exit = True

    def on_signal(signum: signal.Signals) -> None:
        if not state.lifecycle.draining:
            logger.info("%s: draining, then exiting", signum.name)
            drain = state.drain()
            drain.add_done_callback(lambda _task: setattr(server, "should_exit", True))
        elif signum is signal.SIGINT:
            logger.warning("second interrupt: exiting now")
            server.force_exit = True
            server.should_exit = True

    state.on_fatal = on_fatal
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.serve()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return exit_code


def run(settings: ServerSettings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(settings))
