"""kind end-to-end: the chart, the image and a BenchmarkRun on a real (throw-away) cluster.

Wraps hack/e2e-kind.sh, which does every step (cluster, image, helm install, mock model server,
run, `kubectl wait --for=condition=Succeeded`, teardown). Deselected by default (marker `e2e`);
run it with `python -m pytest tests/e2e -m e2e` on a machine with a Docker engine, kind,
kubectl and helm. Skips, saying why, where any of them is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"


def _which(name: str) -> str | None:
    local = TOOLS_BIN / name
    return str(local) if os.access(local, os.X_OK) else shutil.which(name)


def _missing_prerequisite() -> str | None:
    for tool in ("docker", "kind", "kubectl", "helm"):
        if _which(tool) is None:
            return f'{tool} not found (see docs/install.md, "kind end-to-end test")'
    try:
        info = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "no Docker engine answers (docker info timed out)"
    if info.returncode != 0:
        return f"no Docker engine answers (docker info: {info.stderr.strip()[:200]})"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_benchmarkrun_succeeds_on_kind() -> None:
    reason = _missing_prerequisite()
    if reason:
        pytest.skip(reason)
    res = subprocess.run(
        ["bash", str(ROOT / "hack" / "e2e-kind.sh")],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-8000:]
    assert "e2e: PASS (smoke Succeeded)" in res.stdout
    # `kubectl get br -o wide` printed the run.
    assert any(line.split()[:1] == ["smoke"] for line in res.stdout.splitlines())
