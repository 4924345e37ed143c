#!/usr/bin/env bash
# The full test suite, every tier this machine can run: static checks, unit, server (real models and
# processes), and the k8s tier against a real control plane that it builds (cached) and starts.
# Extra arguments go to pytest (e.g. hack/test.sh -m "not slow" -x).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

bash hack/setup.sh
bash hack/build-tools.sh >/dev/null
bash hack/verify-all.sh
# Models ship inside wheels; a test that tries to reach a hub must fail, not download.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$VENV/bin/pytest" "$@"
