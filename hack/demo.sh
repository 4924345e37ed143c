#!/usr/bin/env bash
# The local demo, end to end on this machine, on the real path:
#   1. a real Kubernetes cluster with simulated GPU nodes (kwok) and its data plane: the local
#      kubelet that runs the server image's pods as real processes, Traefik as the Gateway,
#      Prometheus and prometheus-adapter;
#   2. the operator reconciling the sample ModelDeployment; Ready as the pod's real server probes say;
#   3. a question through the Gateway (HTTPRoute → Service → EndpointSlice → pod IP → the pod's
#      server) with the official `openai` client, and the metrics Prometheus scraped.
# Set-up and builds run here (they need the package registries); the cluster and everything that
# talks to it run inside the `modelplane` network namespace (only lo). The cluster keeps running
# afterwards (hack/cluster.sh shell to look around, hack/cluster.sh down to stop it); the operator
# stops with the demo.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

if ! in_isolated_netns; then
  bash hack/setup.sh
  bash hack/build-tools.sh >/dev/null
  bash hack/build-tools.sh dataplane >/dev/null
  netns_ensure "$MODELPLANE_NETNS"
  exec ip netns exec "$MODELPLANE_NETNS" bash hack/demo.sh
fi

export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 hack/localcluster.py up --with dataplane >/dev/null
eval "$(python3 hack/localcluster.py env)"
status="$(python3 hack/localcluster.py status)"
gateway="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["gateway"])' <<<"$status")"
prometheus="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["prometheus"])' <<<"$status")"
logs="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "1/3 the simulated GPU fleet, and the data plane (Gateway $gateway, Prometheus $prometheus)"
kubectl get nodes -L nvidia.com/gpu.product \
  -o custom-columns='NAME:.metadata.name,GPU:.metadata.labels.nvidia\.com/gpu\.product,GPUS:.status.allocatable.nvidia\.com/gpu'

log "2/3 the operator reconciles a ModelDeployment; its pod is a real server (logs: $logs)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null  # both CRDs, not crds/samples/
# Polled, not `kubectl wait`: that fails at once while the fresh CRD has no status.conditions yet.
for _ in $(seq 240); do
  established="$(kubectl get crd modeldeployments.modelplane.io \
    -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')"
  [ "$established" = True ] && break
  sleep 0.25
done
[ "$established" = True ] || die "crd/modeldeployments.modelplane.io not Established within 60 s"
MODELPLANE_OPERATOR_METRICS_PORT="$(free_port)" MODELPLANE_OPERATOR_HEALTH_PORT="$(free_port)" \
  modelplane-operator run --namespace modelplane-demo >"$logs/operator.log" 2>&1 &
pids+=($!)
kubectl create namespace modelplane-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n modelplane-demo -f crds/samples/minimal.yaml
kubectl apply -n modelplane-demo --server-side -f - >/dev/null <<'EOF'
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: smollm2
spec:
  parentRefs: [{name: modelplane, namespace: modelplane-gateway, sectionName: web}]
  rules: [{backendRefs: [{name: smollm2, port: 80}]}]
EOF
log "waiting for Ready: the server loads SmolLM2-135M in its pod; Ready comes from its startup probe"
if ! kubectl wait -n modelplane-demo --for=condition=Ready md/smollm2 --timeout=600s >/dev/null; then
  log "the ModelDeployment did not become Ready:"
  kubectl get md -n modelplane-demo -o wide; tail -20 "$logs/operator.log"; exit 1
fi
kubectl get modeldeployments -n modelplane-demo -o wide
kubectl get deployments,services,httproutes,pods -n modelplane-demo -o wide

log "3/3 a question through the Gateway ($gateway → HTTPRoute → Service → pod → its server)"
python - "$gateway" <<'PY'
import sys
import time

import httpx
from openai import OpenAI

base_url = f"{sys.argv[1]}/v1"
# The Gateway is Programmed a moment before its routes are live: wait for the route to answer.
http = httpx.Client(trust_env=False)
for _ in range(120):
    try:
        if http.get(f"{base_url}/models", timeout=5).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
client = OpenAI(base_url=base_url, api_key="unused", http_client=http)
model = client.models.list().data[0].id
question = "What is the capital of France? Answer in one sentence."
print(f"> {question}")
started = time.perf_counter()
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": question}],
    max_tokens=48,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    usage = chunk.usage or usage
elapsed = time.perf_counter() - started
print(f"\n[{model}: {usage.completion_tokens} tokens in {elapsed:.2f}s]" if usage else "")
embeddings = client.embeddings.create(model=client.models.list().data[-1].id, input=["GPUs", "graphics cards"])
print(f"[embeddings: {len(embeddings.data)} vectors of {len(embeddings.data[0].embedding)} dimensions]")
PY
log "a few of the server's metrics, as Prometheus scraped them from the pod:"
python - "$prometheus" <<'PY'
import sys
import time

import httpx

http = httpx.Client(trust_env=False, base_url=sys.argv[1])
queries = {
    "generated tokens": 'sum by (pod) (modelplane_generation_tokens_total{namespace="modelplane-demo"})',
    "requests finished": 'sum by (pod) (modelplane_requests_finished_total{namespace="modelplane-demo"})',
    "queue depth (the HPA's signal)": 'modelplane_queue_depth{namespace="modelplane-demo"}',
}
time.sleep(3)  # one scrape interval (2 s) after the request
for title, query in queries.items():
    for series in http.get("/api/v1/query", params={"query": query}).json()["data"]["result"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()) if k in ("pod", "modeldeployment", "variant"))
        print(f"  {title:32} {series['value'][1]:>6}  {{{labels}}}")
PY
log "done. The cluster is still up: hack/cluster.sh shell (then kubectl get md -A); stop it: hack/cluster.sh down"
