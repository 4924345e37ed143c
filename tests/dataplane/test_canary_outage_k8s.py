"""A Prometheus outage in the middle of a canary's analysis, on the real data plane: the operator
reads the real Prometheus through a relay this test can cut; once cut, every window is
Inconclusive, the canary pauses (never passes, never fails), and is rolled back when the
inconclusive timeout runs out — it never hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dataplanesupport import (
    DataPlane,
    GatewayLoad,
    canary_status,
    events,
    md_condition,
    start_with_route,
    wait_for_canary,
    wait_for_phase,
)
from modelplane_operator import handlers

from testsupport import operator_thread, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]


class Relay:
    """A TCP relay on 127.0.0.1 to the data plane's Prometheus that can be cut (connections then
    refused), as a Prometheus outage looks to a client."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=10)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def cut(self) -> None:
        self._cut.set()
        self._listener.close()
        for connection in self._open:
            connection.close()


@pytest.fixture(scope="module")
def relay(dataplane: DataPlane) -> Iterator[Relay]:
    relay = Relay(dataplane.prometheus)
    yield relay
    relay.cut()


@pytest.fixture(scope="module")
def relayed_operator(dataplane: DataPlane, relay: Relay) -> Iterator[handlers.OperatorContext]:
    """The operator reading Prometheus through the relay (this module only: no other operator
    runs meanwhile)."""
    with operator_thread(
        dataplane.cluster.kubeconfig, ["test-*"], prometheus_url=relay.url
    ) as context:
        yield context


def test_a_prometheus_outage_pauses_the_canary_then_rolls_it_back(
    dataplane: DataPlane,
    relayed_operator: object,
    relay: Relay,
    dp_namespace: str,
    tiny_llama_dir: Path,
) -> None:
    canary: dict[str, Any] = {
        "server": {"maxWaitMs": 4},
        "replicas": 1,
        "steps": [{"weight": 50, "analysis": True}, {"weight": 80, "analysis": True}],
        "analysis": {
            "interval": "15s",
            "minSamples": 5,
            "inconclusiveTimeout": "40s",
            "checks": [{"name": "error-ratio", "metric": "ErrorRatio", "maxIncrease": 0.05}],
        },
    }
    host = start_with_route(dataplane, dp_namespace, tiny_llama_dir, canary, replicas=1)
    wait_for_canary(dataplane, dp_namespace, weight=50)
    with GatewayLoad(dataplane, host, 2) as load:
        # A window passes while Prometheus answers: the canary advances.
        wait_for(
            lambda: canary_status(dataplane, dp_namespace).get("step") == 1,
            timeout=90,
            interval=1,
            what="a passing window moving the canary to its second step",
        )
        relay.cut()
        cut_at = time.monotonic()
        paused = wait_for(
            lambda: (
                md_condition(dataplane, dp_namespace, "CanaryHealthy").get("reason")
                == "Inconclusive"
                and md_condition(dataplane, dp_namespace, "CanaryHealthy")
            ),
            timeout=60,
            interval=1,
            what="the canary paused as Inconclusive",
        )
        assert paused["status"] == "Unknown", paused
        assert "Prometheus" in paused["message"], paused
        wait_for_phase(dataplane, dp_namespace, "RolledBack", timeout=120)
        rolled_back_after = time.monotonic() - cut_at
    assert not load.failures, load.failures[:3]
    # Not before the timeout (40 s), and not long after it (a window every 15 s).
    assert 40 <= rolled_back_after <= 100, rolled_back_after
    status = canary_status(dataplane, dp_namespace)
    assert (status["weight"], status["step"]) == (0, 1)
    assert "analysis inconclusive for 40s" in status["history"][-1]["message"]
    assert "CanaryRolledBack" in events(dataplane, dp_namespace)
