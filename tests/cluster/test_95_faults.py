"""The fault suite's CI variant: ``python hack/fault_suite.py --short`` (docs/faults.md):
every scenario must end as documented, with nothing lost or counted twice. It runs on a control
plane of its own (another slot, started and purged by the suite), so it does not wait for the
other cluster tests: tests/conftest.py sends it to an xdist worker of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from realkube import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.fault]


def test_fault_suite_short(spare_slot: int) -> None:
    env = {**os.environ, "BENCHOP_KUBE_SLOT": str(spare_slot)}
    env.pop("BENCHOP_KUBE_DIR", None)  # the slot's own state dir
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
