#!/usr/bin/env bash
# Copy the generated CRD (crds/) into the Helm chart as a template, so `helm upgrade` upgrades it
# (Helm never upgrades files in a chart's crds/ directory) and `crds.keep` can protect it.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
out="${1:-charts/modelplane/templates}"
"$VENV/bin/python" - "$out" <<'PY'
import sys
from pathlib import Path

import yaml

out = Path(sys.argv[1])
for source in sorted(Path("crds").glob("*.yaml")):
    text = source.read_text()
    if "{{" in text:
        sys.exit(f"{source} contains '{{{{', which Helm would read as a template")
    crd = yaml.safe_load(text)
    crd["metadata"].setdefault("annotations", {})["MODELPLANE_KEEP"] = "x"
    body = yaml.safe_dump(crd, sort_keys=False, width=100)
    body = body.replace(
        "    MODELPLANE_KEEP: x\n",
        '    {{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep\n    {{- end }}\n',
    )
    target = out / f"crd-{source.stem.split('.')[0]}.yaml"
    target.write_text(
        f"# Generated from {source} by hack/update-chart-crds.sh: do not edit.\n"
        "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n"
    )
PY
