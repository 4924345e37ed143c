"""Dynamic (request-level) batching for embeddings.

Callers' texts wait in one bounded queue (counted in texts, `max_queue`). A dedicated thread takes
the first waiting text, then, while the batcher is busy, keeps gathering until `max_batch_size`
texts are in hand or `max_wait_ms` has passed since it took the first; it runs one forward over
them and resolves each caller's future when all of its texts are done. A caller with more texts
than a batch holds simply spans several batches.

"Busy" means the last forward had company (more than one text, or texts were waiting when it
ended) and ended less than a second ago. An idle batcher does not wait: a lone request at low load
runs at once instead of paying `max_wait_ms` for company that is not coming, and texts that arrive
during its forward form the next batch. Under load every batch has company, so batches fill.

Texts are tokenised on the caller's side (the event loop) so an over-long input is rejected at once
with `PromptTooLongError` rather than silently truncated. The runner (torch) is behind the
`EmbeddingRunner` protocol; tests use a fake one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelplane_server.engine.contract import (
    EmbeddingConfig,
    EngineObserver,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
)

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 1.0
# How long after a forward with company the batcher still counts as busy (and waits for company).
_BUSY_WINDOW_S = 1.0


class EmbeddingRunner(Protocol):
    def embed(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """L2-normalised embeddings of token-id sequences, one per sequence."""


class _Tokenizer(Protocol):
    def __call__(self, text: str, *, add_special_tokens: bool = True) -> Any: ...


@dataclass
class _Job:
    """One `embed()` call: its texts' token ids and where their vectors go."""

    token_ids: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[list[float]]]
    vectors: list[list[float] | None] = field(default_factory=list)
    remaining: int = 0


class DynamicBatchingEmbeddingEngine:
    """`types.EmbeddingEngine`: concurrent callers' texts share forwards on one thread."""

    def __init__(
        self,
        runner: EmbeddingRunner,
        tokenizer: _Tokenizer,
        config: EmbeddingConfig,
        *,
        model_id: str,
        dimensions: int,
        context_length: int,
        observer: EngineObserver | None = None,
    ) -> None:
        self._runner = runner
        self._tokenizer = tokenizer
        self._config = config
        self._model_id = model_id
        self._dimensions = dimensions
        self._context_length = context_length
        self._observer = observer
        self._pending: collections.deque[tuple[_Job, int]] = collections.deque()
        self._condition = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._had_company = False  # the last forward had more than one text, or a queue behind it
        self._last_forward_end = -math.inf

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def waiting(self) -> int:
        """Texts waiting for a batch (cheap; for gauges)."""
        return len(self._pending)

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        with self._condition:
            self._accepting = True
        self._thread.start()

    async def stop(self, drain_timeout_s: float) -> None:
        with self._condition:
            self._accepting = False
            self._stopping = True
            self._condition.notify_all()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, max(drain_timeout_s, 0.0))
        # Whatever did not run within the drain timeout fails now.
        with self._condition:
            leftovers = list(self._pending)
            self._pending.clear()
        for job, _ in leftovers:
            _resolve(job, NotAcceptingError("the embedding engine stopped"))

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        if not self._accepting:
            raise NotAcceptingError("the embedding engine is not accepting requests")
        token_ids = [
            list(self._tokenizer(text, add_special_tokens=True)["input_ids"]) for text in texts
        ]
        for index, ids in enumerate(token_ids):
            if len(ids) > self._context_length:
                raise PromptTooLongError(
                    f"input {index} has {len(ids)} tokens; the embedding model takes at most "
                    f"{self._context_length}",
                    limit=self._context_length,
                )
        tokens = sum(len(ids) for ids in token_ids)
        if not token_ids:
            return [], 0
        loop = asyncio.get_running_loop()
        job = _Job(token_ids, loop, loop.create_future(), [None] * len(token_ids), len(token_ids))
        with self._condition:
            if not self._accepting:
                raise NotAcceptingError("the embedding engine is not accepting requests")
            if len(self._pending) + len(token_ids) > self._config.max_queue:
                full = True
            else:
                full = False
                self._pending.extend((job, index) for index in range(len(token_ids)))
                self._condition.notify()
        if full:
            if self._observer is not None:
                self._observer.on_rejected("embedding_queue_full")
            raise QueueFullError(
                f"{len(self._pending)} texts are waiting for the embedding model", retry_after_s=1.0
            )
        # Cancelling the caller leaves its texts in the queue: they are cheap, and pulling them out
        # would cost a scan; their results are simply dropped.
        return await job.future, tokens

    def _run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            if batch:
                self._forward(batch)

    def _gather(self) -> list[tuple[_Job, int]] | None:
        """Wait for a first text, then (when busy) up to max_wait_ms for the batch to fill; None
        means exit."""
        limit = self._config.max_batch_size
        with self._condition:
            while not self._pending:
                if self._stopping:
                    return None
                self._condition.wait(_IDLE_WAIT_S)
            now = time.monotonic()
            busy = self._had_company and now - self._last_forward_end < _BUSY_WINDOW_S
            deadline = now + self._config.max_wait_ms / 1000.0
            while busy and len(self._pending) < limit and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            count = min(limit, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]

    def _forward(self, batch: list[tuple[_Job, int]]) -> None:
        inputs = [job.token_ids[index] for job, index in batch]
        started = time.monotonic()
        try:
            vectors = self._runner.embed(inputs)
        except Exception as error:
            logger.exception("embedding forward over %d texts failed", len(batch))
            for job in {id(job): job for job, _ in batch}.values():
                _resolve(job, error)
            return
        ended = time.monotonic()
        duration = ended - started
        with self._condition:
            self._had_company = len(batch) > 1 or bool(self._pending)
            self._last_forward_end = ended
        if self._observer is not None:
            try:
                self._observer.on_embedding_batch(
                    len(batch), sum(len(ids) for ids in inputs), duration
                )
            except Exception:
                logger.exception("engine observer failed")
        for (job, index), vector in zip(batch, vectors, strict=True):
            job.vectors[index] = vector
            job.remaining -= 1
            if job.remaining == 0:
                _resolve(job, None)


def _resolve(job: _Job, error: BaseException | None) -> None:
    """Complete a caller's future from the batcher thread (thread-safely, once)."""

    def complete() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result([vector for vector in job.vectors if vector is not None])

    try:
        job.loop.call_soon_threadsafe(complete)
    except RuntimeError:
        logger.debug("event loop closed; dropping an embedding result")
