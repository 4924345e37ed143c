#!/usr/bin/env bash
# Create .venv with every pinned dependency (uv.lock), the server extra and the dev tools included.
# Idempotent and quick when nothing changed.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

ensure_uv
python="$(command -v python3.11 || command -v python3)"
"$UV" sync --locked --all-extras --python "$python" --quiet
log "environment ready: $VENV ($("$VENV/bin/python" --version))"
