"""Helpers for the data-plane tier (tests/dataplane): the handle on a data-plane cluster, objects
the tests apply, and polling on what the real processes report."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

from testsupport import Cluster, tool_cache, wait_for


def dataplane_binary(name: str) -> Path | None:
    """A binary `hack/build-tools.sh dataplane` built (promtool, prometheus, ...), if it did."""
    found = sorted(tool_cache().glob(f"bin/traefik-*_prometheus-*/{name}"))
    return found[-1] if found else None


# Every address here is local to the namespace: never through a proxy from the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class DataPlane:
    cluster: Cluster
    gateway: str  # http://<namespace address>:<port>, Traefik's entry point for the Gateway
    prometheus: str
    kubelet_dir: Path
    prometheus_rules: Path  # rule files Prometheus loads on POST /-/reload

    def load_rules(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Load rule groups (a PrometheusRule's spec.groups) into the real Prometheus, as the
        Prometheus Operator does: a rule file, then a reload; returns once they are evaluated."""
        (self.prometheus_rules / f"{name}.yaml").write_text(json.dumps({"groups": groups}))
        # The URL is the data plane's own Prometheus (http on the loopback), never user input.
        request = urllib.request.Request(f"{self.prometheus}/-/reload", method="POST")  # noqa: S310
        with DIRECT.open(request, timeout=30) as response:
            assert response.status == 200

        def loaded() -> bool:
            with DIRECT.open(f"{self.prometheus}/api/v1/rules", timeout=10) as response:
                listed = json.load(response)["data"]["groups"]
            wanted = {group["name"] for group in groups}
            return wanted <= {group["name"] for group in listed}

        wait_for(loaded, timeout=30, interval=0.5, what=f"Prometheus loading {name}'s rules")

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus holds now (pending and firing)."""
        with DIRECT.open(f"{self.prometheus}/api/v1/alerts", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["alerts"])

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        return self.cluster.kubectl(*args, **kwargs)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with DIRECT.open(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])


def model_deployment(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment for the data plane; embeddings off unless asked for (memory, start)."""
    server = {"extraArgs": ["--embedding-model=none"], **spec.pop("server", {})}
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": uri}, "server": server, **spec},
    }


def apply(plane: DataPlane, namespace: str, *objects: dict[str, Any]) -> None:
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    plane.kubectl("apply", "-n", namespace, "--server-side", "-f", "-", input=document)


def route_host(namespace: str) -> str:
    """The hostname of a test namespace's HTTPRoutes (`.test` is reserved for testing).

    Every test routes by its own hostname. Routes without one all match every request on the
    shared listener with the same priority, and Traefik then picks one of them arbitrarily at each
    configuration rebuild; a deleted namespace keeps its routes until its pods have drained
    (ordered namespace deletion), so the previous test's route, with no ready endpoint left, took
    the next test's traffic: thousands of 503s, now and then.
    """
    return f"{namespace}.modelplane.test"


def http_route(name: str, service: str, host: str, port: int = 80) -> dict[str, Any]:
    """An HTTPRoute from the local cluster's Gateway to a ModelDeployment's Service, for `host`."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [
                {
                    "name": "modelplane",
                    "namespace": "modelplane-gateway",
                    "sectionName": "web",
                }
            ],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": service, "port": port}]}],
        },
    }


def gateway_client(plane: DataPlane, host: str, timeout: float) -> OpenAI:
    """The official OpenAI client, through the Gateway, for the routes of `host`."""
    return OpenAI(
        base_url=f"{plane.gateway}/v1",
        api_key="unused",
        max_retries=0,
        timeout=timeout,
        default_headers={"Host": host},
    )


def ready_condition(plane: DataPlane, namespace: str, name: str) -> dict[str, Any] | None:
    obj = plane.get("-n", namespace, "modeldeployment", name)
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return dict(condition)
    return None


def wait_ready(plane: DataPlane, namespace: str, name: str, timeout: float = 240) -> None:
    """Until the ModelDeployment is Ready; on timeout, say what its status and pods said."""
    try:
        wait_for(
            lambda: (ready_condition(plane, namespace, name) or {}).get("status") == "True",
            timeout=timeout,
            interval=0.5,
            what=f"ModelDeployment {name} Ready",
        )
    except AssertionError as error:
        md = plane.get("-n", namespace, "modeldeployment", name).get("status", {})
        states = [
            (
                p["metadata"]["name"],
                p.get("status", {}).get("conditions"),
                p.get("status", {}).get("containerStatuses"),
            )
            for p in pods(plane, namespace, name)
        ]
        raise AssertionError(
            f"{error}\nstatus: {json.dumps(md)}\npods: {json.dumps(states)}"
        ) from None


def pods(plane: DataPlane, namespace: str, instance: str) -> list[dict[str, Any]]:
    items = plane.get("-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={instance}")
    return list(items["items"])


def wait_answer(url: str, host: str, timeout: float = 60) -> None:
    """Until the gateway routes `host` to a server: Programmed comes a moment before routes are
    live."""
    request = urllib.request.Request(url, headers={"Host": host})  # noqa: S310 - http:// only

    def answers() -> bool:
        try:
            with DIRECT.open(request, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(answers, timeout=timeout, interval=0.5, what=f"an answer from {url}")


def describe_failure(error: Exception, started: float) -> str:
    """One failed request for an assertion message: when (s into the load), status, and body."""
    response = getattr(error, "response", None)
    body = response.text[:160] if response is not None else ""
    return f"t+{time.monotonic() - started:.1f}s {error!r} {body}".rstrip()


def events(plane: DataPlane, namespace: str) -> str:
    """The namespace's events, oldest first, as `kubectl get events` prints them."""
    result = plane.kubectl(
        "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
    )
    return str(result.stdout)
