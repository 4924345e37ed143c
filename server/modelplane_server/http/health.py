"""The server's lifecycle and what the three Kubernetes probes answer from it.

- startup (`/health/startup`): 503 while the models load and warm up, then 200 for good;
- readiness (`/health/ready`): 200 only while the models are loaded and the server is not draining;
- liveness (`/health/live`): 503 when generation work is in flight and the engine's step loop has
  not finished a step for `liveness_stall_s` (a wedged loop, which vLLM's error-flag check misses).
  The clock starts at the later of the last finished step and the moment work arrived at an idle
  engine, so a long-idle engine is not called stalled while its first step runs.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelplane_server.engine.contract import EngineStats


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"  # loading failed; the process exits


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: str
    detail: str = ""

    @property
    def status_code(self) -> int:
        return 200 if self.ok else 503


class Lifecycle:
    """Phase plus the bookkeeping liveness needs; safe to read from any thread."""

    def __init__(
        self, liveness_stall_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.liveness_stall_s = liveness_stall_s
        self._monotonic = monotonic
        self.started_at = self._monotonic()
        self.phase = Phase.LOADING
        self.loaded_at: float | None = None
        self.failure = ""
        self._lock = threading.Lock()
        self._generations_in_flight = 0
        self._busy_since: float | None = None

    def monotonic(self) -> float:
        return self._monotonic()

    # --- transitions ---------------------------------------------------------------------------

    def mark_ready(self) -> None:
        with self._lock:
            self.loaded_at = self._monotonic()
            if self.phase is Phase.LOADING:
                self.phase = Phase.READY

    def mark_failed(self, reason: str) -> None:
        with self._lock:
            self.failure = reason
            self.phase = Phase.FAILED

    def begin_drain(self) -> bool:
        """Stop admitting work. Returns False if draining had already begun."""
        with self._lock:
            if self.phase is Phase.DRAINING:
                return False
            self.phase = Phase.DRAINING
            return True

    @property
    def loaded(self) -> bool:
        return self.loaded_at is not None

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.READY

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    # --- work accounting (liveness) ------------------------------------------------------------

    def generation_started(self) -> None:
        with self._lock:
            if self._generations_in_flight == 0:
                self._busy_since = self._monotonic()
            self._generations_in_flight += 1

    def generation_finished(self) -> None:
        with self._lock:
            self._generations_in_flight -= 1
            if self._generations_in_flight == 0:
                self._busy_since = None

    # --- probes --------------------------------------------------------------------------------

    def startup(self) -> ProbeResult:
        if self.loaded:
            return ProbeResult(True, "started")
        if self.phase is Phase.FAILED:
            return ProbeResult(False, "failed", self.failure)
        return ProbeResult(False, "loading", "the models are loading")

    def readiness(self) -> ProbeResult:
        if self.phase is Phase.READY:
            return ProbeResult(True, "ready")
        details = {
            Phase.LOADING: "the models are loading",
            Phase.DRAINING: "the server is draining (SIGTERM)",
            Phase.FAILED: self.failure,
        }
        return ProbeResult(False, self.phase.value, details[self.phase])

    def liveness(self, stats: EngineStats | None) -> ProbeResult:
        if self.phase is Phase.FAILED:
            return ProbeResult(False, "failed", self.failure)
        if stats is None or stats.waiting + stats.running == 0:
            return ProbeResult(True, "alive")
        with self._lock:
            busy_since = self._busy_since
        references = [t for t in (stats.last_step_monotonic, busy_since, self.loaded_at) if t]
        reference = max(references, default=self.started_at)
        stalled_for = self._monotonic() - reference
        if stalled_for > self.liveness_stall_s:
            return ProbeResult(
                False,
                "stalled",
                f"{stats.waiting + stats.running} requests in flight and no engine step "
                f"finished for {stalled_for:.1f} s (limit {self.liveness_stall_s:g} s)",
            )
        return ProbeResult(True, "alive")
