"""The server's lifecycle around its HTTP side: it loads the models on a background thread after
the HTTP server is up (so `/health/startup` can answer 503 meanwhile), starts the engines, counts
the HTTP requests in flight, and drains on SIGTERM or at shutdown. Nothing here imports torch: the
loader does, lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from modelplane_server.engine.contract import EmbeddingEngine, EngineObserver, GenerationEngine
from modelplane_server.http.health import Lifecycle
from modelplane_server.metrics import Metrics
from modelplane_server.openai.admission import Admission, Engines, Limits
from modelplane_server.settings import ServerSettings

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
LoadedEngines = tuple[GenerationEngine, EmbeddingEngine | None]
Loader = Callable[[ServerSettings, EngineObserver, Progress], LoadedEngines]
HTTP_IDLE_WAIT_S = 5.0


class ServerState:
    """Lifecycle, engines and drain of one app instance (kept on `app.state.server`)."""

    def __init__(self, settings: ServerSettings, loader: Loader) -> None:
        self.settings = settings
        self.loader = loader
        self.lifecycle = Lifecycle(settings.liveness_stall_s)
        self.metrics = Metrics(tenants=settings.api_keys().tenants)
        self.metrics.is_ready = lambda: self.lifecycle.accepting
        self.metrics.is_draining = lambda: self.lifecycle.draining
        self.admission = Admission(
            self.lifecycle,
            self.metrics,
            Limits(settings.queue_timeout_s, settings.request_timeout_s),
        )
        self.http_in_flight = 0
        self.on_fatal: Callable[[str], None] | None = None
        self._http_idle = asyncio.Event()
        self._http_idle.set()
        self._load_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._started_engines: list[GenerationEngine | EmbeddingEngine] = []

    # --- loading -------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            generation, embedding = await _in_daemon_thread(
                lambda: self.loader(self.settings, self.metrics, _log_progress)
            )
            if self.lifecycle.draining:
                return
            await generation.start()
            self._started_engines.append(generation)
            if embedding is not None:
                await embedding.start()
                self._started_engines.append(embedding)
        except Exception as error:
            logger.exception("loading the models failed")
            self.lifecycle.mark_failed(f"loading the models failed: {error}")
            if self.on_fatal is not None:
                self.on_fatal(str(error))
            return
        model_id = self.settings.served_model_name or generation.model_id
        self.admission.engines = Engines(generation, embedding, model_id)
        self.metrics.stats_source = generation.stats
        self.lifecycle.mark_ready()
        logger.info(
            "ready in %.1f s: generating with %s (context %d)%s",
            time.monotonic() - started,
            model_id,
            generation.context_length,
            "" if embedding is None else f", embedding with {embedding.model_id}",
        )

    # --- draining ------------------------------------------------------------------------------

    def drain(self) -> asyncio.Task[None]:
        """Begin draining (idempotent): readiness and new requests get 503 from now on; running
        requests get `--drain-timeout-s` to finish, then the engines end them with `abort`."""
        if self._drain_task is None:
            self.lifecycle.begin_drain()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        timeout = self.settings.drain_timeout_s
        logger.info(
            "draining: %d HTTP requests in flight, up to %g s", self.http_in_flight, timeout
        )
        started = time.monotonic()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # the loading thread is a daemon: it dies with the process
        results = await asyncio.gather(
            *(
                asyncio.wait_for(engine.stop(timeout), timeout + HTTP_IDLE_WAIT_S)
                for engine in self._started_engines
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.error("stopping an engine failed: %r", result)
        # The engines have ended every stream; give the handlers a moment to send the last bytes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._http_idle.wait(), HTTP_IDLE_WAIT_S)
        logger.info(
            "drained in %.1f s (%d HTTP requests still open)",
            time.monotonic() - started,
            self.http_in_flight,
        )

    # --- HTTP bookkeeping ----------------------------------------------------------------------

    def http_started(self) -> None:
        self.http_in_flight += 1
        self._http_idle.clear()

    def http_finished(self) -> None:
        self.http_in_flight -= 1
        if self.http_in_flight == 0:
            self._http_idle.set()


def _log_progress(message: str) -> None:
    logger.info("loading: %s", message)


async def _in_daemon_thread(function: Callable[[], LoadedEngines]) -> LoadedEngines:
    """Run blocking work on a daemon thread: unlike `asyncio.to_thread`, a SIGTERM during a long
    model load need not wait for it to finish."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[LoadedEngines] = loop.create_future()

    def settle(result: LoadedEngines | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        try:
            result = function()
        except BaseException as error:  # handed to the event loop, which re-raises it
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="modelplane-load", daemon=True).start()
    return await future
