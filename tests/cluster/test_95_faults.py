"""The fault suite's CI variant: ``python hack/fault_suite.py --short`` on the control plane of
this session (docs/faults.md): every scenario must end as documented, with nothing lost or
counted twice. It reinstalls the chart with the operator behind its API proxy and uninstalls it
at the end, so it runs last."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from realkube import ROOT, RealKube

pytestmark = [pytest.mark.cluster, pytest.mark.fault]


def test_fault_suite_short(cluster: RealKube) -> None:
    env = {**os.environ, "BENCHOP_KUBE_DIR": str(cluster.dir)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "fault_suite.py"), "--short"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    print(res.stdout)
    last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert res.returncode == 0, f"{last}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    assert last.startswith("scenarios ") and " lost 0 double 0" in last, last
