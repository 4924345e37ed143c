"""Fixtures of the chart tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from chartsupport import tools_bin


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm the control-plane build made (hack/build-tools.sh)."""
    return tools_bin() / "helm"
