"""Probes as the kubelet runs them: spec defaults, thresholds, and real HTTP/TCP checks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from dataplane.podspec import PodConfigError
from dataplane.probes import Probe, ProbeState, check

CONTAINER = {"name": "server", "ports": [{"name": "http", "containerPort": 8000}]}


def test_spec_defaults_are_the_pod_apis() -> None:
    probe = Probe.from_spec(CONTAINER, {"httpGet": {"port": "http", "path": "/health/ready"}})
    assert probe == Probe(kind="http", port=8000, path="/health/ready")
    assert (probe.period_s, probe.timeout_s, probe.failure_threshold) == (10, 1, 3)
    assert Probe.from_spec(CONTAINER, None) is None
    with pytest.raises(PodConfigError, match="grpc"):
        Probe.from_spec(CONTAINER, {"grpc": {"port": 9000}})


def test_health_flips_only_at_the_thresholds() -> None:
    state = ProbeState(Probe(kind="http", port=1, success_threshold=2, failure_threshold=2))
    assert not state.record(True)  # one success of two
    assert state.record(True)
    assert state.healthy
    assert not state.record(False, "503")
    assert state.healthy  # one failure of two
    assert state.record(False, "503")
    assert not state.healthy
    assert state.failed
    assert state.last_error == "503"


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        status = "200 OK" if b"/ok" in request else "503 Service Unavailable"
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        yield int(listener.sockets[0].getsockname()[1])


async def test_http_and_tcp_checks_against_a_real_listener(server: int) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        assert await check(Probe(kind="http", port=server, path="/ok"), "127.0.0.1", client) == (
            True,
            "",
        )
        ok, why = await check(Probe(kind="http", port=server, path="/busy"), "127.0.0.1", client)
        assert not ok
        assert "statuscode: 503" in why
        assert (await check(Probe(kind="tcp", port=server), "127.0.0.1", client))[0]
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed = unused.getsockname()[1]
        ok, why = await check(Probe(kind="http", port=closed), "127.0.0.1", client)
        assert not ok
        assert f"127.0.0.1:{closed}" in why
