#!/usr/bin/env bash
# The local demo, end to end on this machine:
#   1. a real Kubernetes control plane with simulated GPU nodes (kwok);
#   2. the operator reconciling a ModelDeployment into its serving stack, with truthful status;
#   3. the inference server those pods would run, serving the embedded SmolLM2-135M-Instruct,
#      answering through the official `openai` client.
# The cluster keeps running afterwards (hack/cluster.sh down stops it); the operator and server stop.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

bash hack/setup.sh
bash hack/build-tools.sh >/dev/null
bash hack/cluster.sh up >/dev/null
eval "$(bash hack/cluster.sh env)"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
logs="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "1/3 the simulated GPU fleet"
kubectl get nodes -L nvidia.com/gpu.product \
  -o custom-columns='NAME:.metadata.name,GPU:.metadata.labels.nvidia\.com/gpu\.product,GPUS:.status.allocatable.nvidia\.com/gpu'

log "2/3 the operator reconciles a ModelDeployment (logs: $logs/operator.log)"
kubectl apply --server-side --force-conflicts -f crds/modeldeployments.modelplane.io.yaml >/dev/null
kubectl wait --for=condition=Established crd/modeldeployments.modelplane.io --timeout=60s >/dev/null
MODELPLANE_OPERATOR_METRICS_PORT="$(free_port)" MODELPLANE_OPERATOR_HEALTH_PORT="$(free_port)" \
  modelplane-operator run --namespace modelplane-demo >"$logs/operator.log" 2>&1 &
pids+=($!)
kubectl create namespace modelplane-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n modelplane-demo -f crds/samples/minimal.yaml -f crds/samples/full.yaml
if ! kubectl wait -n modelplane-demo --for=condition=Ready md --all --timeout=120s >/dev/null; then
  log "the ModelDeployment did not become Ready; the operator log says:"; tail -20 "$logs/operator.log"; exit 1
fi
kubectl get modeldeployments -n modelplane-demo -o wide
kubectl get deployments,services,hpa,pdb,pods -n modelplane-demo -o wide

log "3/3 the inference server on the embedded SmolLM2-135M-Instruct (logs: $logs/server.log)"
port="$(free_port)"
modelplane-server --host 127.0.0.1 --port "$port" >"$logs/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || { tail -20 "$logs/server.log"; die "the server exited"; }
  sleep 0.5
done
curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null || die "the server did not become ready"
python - "$port" <<'PY'
import sys
import time

from openai import OpenAI

client = OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused")
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
log "a few of the server's metrics (GET /metrics):"
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^modelplane_(generation_tokens_total|requests_finished_total|time_to_first_token_seconds_count)' | head -5 || true
log "done. The cluster is still up: eval \"\$(hack/cluster.sh env)\"; kubectl get md -A. Stop it: hack/cluster.sh down"
