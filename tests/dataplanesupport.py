"""Helpers for the data-plane tier (tests/dataplane): the handle on a data-plane cluster, objects
the tests apply, and polling on what the real processes report."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
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

    def wait_established(self, crd: str) -> None:
        self.cluster.wait_established(crd)

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


def gateway_client(plane: DataPlane, host: str, timeout: float, api_key: str = "unused") -> OpenAI:
    """The official OpenAI client, through the Gateway, for the routes of `host` (the key
    matters only to a ModelDeployment with spec.server.apiKeys)."""
    return OpenAI(
        base_url=f"{plane.gateway}/v1",
        api_key=api_key,
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


def wait_answer(
    url: str, host: str, timeout: float = 60, headers: Mapping[str, str] | None = None
) -> None:
    """Until the gateway routes `host` to a server: Programmed comes a moment before routes are
    live. `headers` carry a key to a keyed server's /v1."""
    headers = {"Host": host, **(headers or {})}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http:// only

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


# --- Canaries (tests/dataplane/test_canary*_k8s.py): a ModelDeployment named "tiny" -----------

CANARY_MD = "tiny"
REQUEST_COUNTER = "modelplane_http_requests_total{"
COMPLETIONS_ROUTE = 'route="/v1/completions"'


def gateway_route(host: str) -> dict[str, Any]:
    """spec.route to the local cluster's Gateway, for the test's own hostname."""
    gateway = {"name": "modelplane", "namespace": "modelplane-gateway", "sectionName": "web"}
    return {"parentRefs": [gateway], "hostnames": [host]}


def start_with_route(
    plane: DataPlane, namespace: str, model_dir: Path, canary: dict[str, Any], replicas: int
) -> str:
    """The tiny model behind the operator's HTTPRoute, with a canary; its hostname once stable
    answers through the Gateway."""
    host = route_host(namespace)
    md = model_deployment(
        CANARY_MD,
        f"file://{model_dir}",
        replicas=replicas,
        route=gateway_route(host),
        canary=canary,
    )
    apply(plane, namespace, md)
    wait_ready(plane, namespace, CANARY_MD)
    wait_answer(f"{plane.gateway}/v1/models", host)
    return host


def canary_status(plane: DataPlane, namespace: str) -> dict[str, Any]:
    status = plane.get("-n", namespace, "modeldeployment", CANARY_MD).get("status", {})
    return dict(status.get("canary") or {})


def md_condition(plane: DataPlane, namespace: str, kind: str) -> dict[str, Any]:
    status = plane.get("-n", namespace, "modeldeployment", CANARY_MD).get("status", {})
    found = [item for item in status.get("conditions", []) if item["type"] == kind]
    return dict(found[0]) if found else {}


def wait_for_canary(plane: DataPlane, namespace: str, weight: int) -> None:
    """Until the canary is ready and routed `weight` percent, and the Gateway serves the route."""
    wait_for(
        lambda: canary_status(plane, namespace).get("weight") == weight,
        timeout=180,
        interval=0.5,
        what=f"the canary ready and routed {weight}%",
    )
    # Traefik applies a changed route a few seconds later (its provider's throttle): until a
    # request has reached the canary through it, the weights are not live yet.
    host = route_host(namespace)
    wait_answer(f"{plane.gateway}/v1/models", host)
    client = gateway_client(plane, host, timeout=30)
    before = served(plane, namespace)["canary"]

    def reached() -> bool:
        client.completions.create(model=CANARY_MD, prompt="Hello", max_tokens=1)
        return served(plane, namespace)["canary"] > before

    wait_for(reached, timeout=60, interval=0.1, what="a request through the Gateway on the canary")


def served(plane: DataPlane, namespace: str) -> Counter[str]:
    """Completions each variant's pods have answered so far, from each server's own counter."""
    counts: Counter[str] = Counter()
    for pod in pods(plane, namespace, CANARY_MD):
        ip = pod.get("status", {}).get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        variant = pod["metadata"]["labels"].get("modelplane.io/variant", "stable")
        with DIRECT.open(f"http://{ip}:8000/metrics", timeout=5) as response:
            text = response.read().decode()
        counts[variant] += sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith(REQUEST_COUNTER) and COMPLETIONS_ROUTE in line
        )
    return counts


def route_weights(plane: DataPlane, namespace: str) -> dict[str, int]:
    """The operator's HTTPRoute's weighted rule: backend Service -> weight."""
    spec = plane.get("-n", namespace, "httproute", CANARY_MD)["spec"]
    weighted = spec["rules"][-1]["backendRefs"]
    return {backend["name"]: backend.get("weight", 1) for backend in weighted}


class GatewayLoad:
    """`workers` threads sending completions through the Gateway until stopped (at most
    SECONDS_MAX); 429s counted, every other failure recorded."""

    SECONDS_MAX = 150

    def __init__(self, plane: DataPlane, host: str, workers: int) -> None:
        self.client = gateway_client(plane, host, timeout=60)
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work) for _ in range(workers)]

    def _work(self) -> None:
        deadline = self.started + self.SECONDS_MAX
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.client.completions.create(model=CANARY_MD, prompt="Hello", max_tokens=8)
                self.statuses[200] += 1
            except openai.RateLimitError:
                self.statuses[429] += 1
            except Exception as error:  # every other failure is one the test must report
                self.failures.append(describe_failure(error, self.started))

    def __enter__(self) -> GatewayLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def wait_for_phase(plane: DataPlane, namespace: str, phase: str, timeout: float) -> None:
    """Until the canary reaches `phase`; on timeout, say where it stands and what happened."""
    try:
        wait_for(
            lambda: canary_status(plane, namespace).get("phase") == phase,
            timeout=timeout,
            interval=1,
            what=f"the canary {phase}",
        )
    except AssertionError as error:
        status = json.dumps(canary_status(plane, namespace), indent=1)
        raise AssertionError(f"{error}\ncanary: {status}\n{events(plane, namespace)}") from None
