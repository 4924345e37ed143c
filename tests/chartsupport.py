"""Helpers for the chart tests: the chart's path and the helm the control-plane build made."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localcluster import REPO_ROOT

CHART = REPO_ROOT / "charts" / "modelplane"


def tools_bin() -> Path:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-tools.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def run_helm(
    helm: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=env, timeout=180, check=False
    )
