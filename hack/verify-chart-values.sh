#!/usr/bin/env bash
# Fail if charts/modelplane/values.yaml and values.schema.json disagree: a value the schema does not
# declare (helm would refuse the chart's own defaults), a declared value with no default in
# values.yaml, or a value without its `# --` comment (what the chart's README and users read).
# `helm lint` (tests/charts) checks the defaults against the schema's types.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
"$VENV/bin/python" - <<'PY'
import json
import sys
from pathlib import Path

import yaml

chart = Path("charts/modelplane")
text = (chart / "values.yaml").read_text()
values = yaml.safe_load(text)
schema = json.loads((chart / "values.schema.json").read_text())
problems = []


def documented(path: list[str]) -> bool:
    """Whether the line defining `path`'s last key is preceded by a `# --` comment."""
    lines = text.splitlines()
    depth, start = 0, 0
    for key in path:
        prefix = "  " * depth + f"{key}:"
        start = next(
            (i for i in range(start, len(lines)) if lines[i].startswith(prefix)), None
        )
        if start is None:
            return False
        depth += 1
    above = start - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if lines[above].strip().startswith("# --"):
            return True
        above -= 1
    return False


def walk(node: object, declared: dict, path: list[str]) -> None:
    properties = declared.get("properties")
    if properties is None or not isinstance(node, dict):
        return
    for key in sorted(set(node) | set(properties)):
        where = ".".join([*path, key])
        if key not in properties:
            problems.append(f"{where}: in values.yaml, not declared in values.schema.json")
        elif key not in node:
            problems.append(f"{where}: declared in values.schema.json, no default in values.yaml")
        else:
            child = properties[key]
            if "properties" not in child and not documented([*path, key]):
                problems.append(f"{where}: no '# --' comment above it in values.yaml")
            walk(node[key], child, [*path, key])


walk(values, schema, [])
if problems:
    sys.exit("values.yaml and values.schema.json disagree:\n  " + "\n  ".join(problems))
PY
log "chart values and schema agree"
