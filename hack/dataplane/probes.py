"""Container probes as the kubelet runs them: HTTP GET or TCP connect, with the spec's timing.

`Probe` is the spec (defaults as in the Pod API); `ProbeState` counts consecutive results against
the thresholds; `check` performs one probe against the pod's address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dataplane.podspec import PodConfigError, container_port


@dataclass(frozen=True)
class Probe:
    kind: str  # "http" or "tcp"
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay_s: float = 0
    period_s: float = 10
    timeout_s: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(
        cls, container: Mapping[str, Any], spec: Mapping[str, Any] | None
    ) -> Probe | None:
        if not spec:
            return None
        timing = {
            "initial_delay_s": spec.get("initialDelaySeconds", 0),
            "period_s": spec.get("periodSeconds", 10),
            "timeout_s": spec.get("timeoutSeconds", 1),
            "success_threshold": spec.get("successThreshold", 1),
            "failure_threshold": spec.get("failureThreshold", 3),
        }
        if "httpGet" in spec:
            get = spec["httpGet"]
            return cls(
                kind="http",
                port=container_port(container, get["port"]),
                path=get.get("path", "/"),
                scheme=get.get("scheme", "HTTP"),
                headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or []),
                **timing,
            )
        if "tcpSocket" in spec:
            return cls(
                kind="tcp", port=container_port(container, spec["tcpSocket"]["port"]), **timing
            )
        kinds = ", ".join(sorted(k for k in spec if k.endswith(("Get", "Socket", "exec", "grpc"))))
        raise PodConfigError(f"probe type {kinds or '?'} is not supported by the local kubelet")


@dataclass
class ProbeState:
    """Consecutive successes and failures; `healthy` flips only at a threshold, as the kubelet's."""

    probe: Probe
    healthy: bool = False
    successes: int = 0
    failures: int = 0
    last_error: str = ""

    def record(self, ok: bool, error: str = "") -> bool:
        """Record one result; True when `healthy` changed."""
        before = self.healthy
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.probe.success_threshold:
                self.healthy = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.last_error = error
            if self.failures >= self.probe.failure_threshold:
                self.healthy = False
        return self.healthy != before

    @property
    def failed(self) -> bool:
        """The failure threshold is reached (liveness and startup then restart the container)."""
        return self.failures >= self.probe.failure_threshold


async def check(probe: Probe, host: str, client: httpx.AsyncClient) -> tuple[bool, str]:
    """One probe: (success, why not). HTTP succeeds on 200-399, as the kubelet's prober does."""
    if probe.kind == "tcp":
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, probe.port), probe.timeout_s
            )
        except (OSError, TimeoutError) as error:
            return False, f"dial tcp {host}:{probe.port}: {error or type(error).__name__}"
        writer.close()
        return True, ""
    url = f"{probe.scheme.lower()}://{host}:{probe.port}{probe.path}"
    try:
        response = await client.get(url, headers=dict(probe.headers), timeout=probe.timeout_s)
    except httpx.TimeoutException:
        return False, f"Get {url}: context deadline exceeded (timeout {probe.timeout_s:g}s)"
    except httpx.HTTPError as error:
        return False, f"Get {url}: {error}"
    if 200 <= response.status_code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {response.status_code}"
