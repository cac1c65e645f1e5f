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


# ----------------------------------------------------------------------------------------------
# The script's own control flow, with stub docker/kind/kubectl/helm (runs everywhere, no marker):
# it waits for Succeeded, fails fast on Succeeded=False, and always deletes the cluster.

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
case "$(basename "$0") $*" in
  "kubectl -n benchop-e2e wait --for=condition=Succeeded"*)
    n=$(( $(cat "$STUB_DIR/waits" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$STUB_DIR/waits"
    [ "$STUB_OUTCOME" = "True" ] && [ "$n" -ge 3 ] && exit 0
    exit 1 ;;
  "kubectl -n benchop-e2e get br smoke -o jsonpath="*Succeeded*)
    if [ "$STUB_OUTCOME" = "False" ]; then echo -n False; else echo -n Unknown; fi ;;
  "kubectl -n benchop-e2e get br -o wide")
    echo "NAME PHASE"; echo "smoke Succeeded" ;;
esac
exit 0
"""


def _run_with_stubs(tmp_path: Path, outcome: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind", "kubectl", "helm"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "BENCHOP_TOOLS_BIN": str(bin_dir),
        "STUB_DIR": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_OUTCOME": outcome,
        "RUN_TIMEOUT_SECONDS": "120",
    }
    res = subprocess.run(
        ["bash", str(ROOT / "hack" / "e2e-kind.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    return res, log.read_text()


def test_e2e_script_flow_on_success(tmp_path: Path) -> None:
    res, calls = _run_with_stubs(tmp_path, "True")
    assert res.returncode == 0, res.stderr
    assert "e2e: PASS (smoke Succeeded)" in res.stdout
    lines = calls.splitlines()
    order = [
        "kind create cluster --name benchop-e2e",
        "docker build",
        "kind load docker-image benchop:e2e --name benchop-e2e",
        "helm upgrade --install benchop charts/benchop",
        "kubectl apply -f tests/e2e/scenarios/smoke/mock-server.yaml",
        "kubectl apply -f tests/e2e/scenarios/smoke/run.yaml",
        "kubectl -n benchop-e2e wait --for=condition=Succeeded br/smoke",
        "kubectl -n benchop-e2e get br -o wide",
        "kind delete cluster --name benchop-e2e",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(o)) for o in order]
    assert positions == sorted(positions), calls
    assert (tmp_path / "waits").read_text().strip() == "3"


def test_e2e_script_fails_fast_on_failure_and_tears_down(tmp_path: Path) -> None:
    res, calls = _run_with_stubs(tmp_path, "False")
    assert res.returncode == 1
    assert "e2e: smoke failed" in res.stderr
    assert "=== e2e: diagnostics" in res.stderr
    assert (tmp_path / "waits").read_text().strip() == "1"
    assert calls.splitlines()[-1] == "kind delete cluster --name benchop-e2e"
