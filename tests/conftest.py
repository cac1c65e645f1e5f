"""How pytest-xdist spreads the tests over its workers (hack/test.sh runs ``-n 3``).

A test file goes to one worker as a whole, so a module-scoped fixture (the report's example
bundles, a fuzz harness, a mock server) is set up once, as in a serial run. Two directories go
as a whole: tests/cluster (one control plane per session; its tests run in file order, install
first, uninstall last: two workers each starting the slot's control plane purge each other's
state dir) and tests/realserver (one llama.cpp server per session). The fault suite's test runs
on a control plane of its own (another slot), so it goes alone, beside the other cluster tests.
A session-scoped fixture defined in any other conftest would be set up once per worker: refused.

(xdist's own ``--dist loadgroup`` does not group on pytest 9.2, pytest-xdist issue #1386: it
renames node ids, which pytest 9.2 no longer reads; this scheduler reads the paths instead.)
"""

from __future__ import annotations

from typing import Any

import pytest

WHOLE_DIRS = ("tests/cluster/", "tests/realserver/")
OWN_CONTROL_PLANE = ("tests/cluster/test_95_faults.py",)
"""Files in WHOLE_DIRS that start a control plane of their own (another slot): one unit each."""


def worker_unit(nodeid: str) -> str:
    """What goes to one worker with the test ``nodeid``: its directory in WHOLE_DIRS, else its
    file."""
    file = nodeid.split("::")[0]
    if file in OWN_CONTROL_PLANE:
        return file
    return next((d for d in WHOLE_DIRS if nodeid.startswith(d)), file)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") == "each":  # every test on every worker: as asked
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return worker_unit(nodeid)

    return Scheduler(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for defs in info.name2fixturedefs.values() if info else ():
            fixture = defs[-1]
            shared = fixture.scope in ("session", "package") and not fixture.baseid.endswith(".py")
            if (
                shared
                and fixture.baseid.startswith("tests")
                and not any(item.nodeid.startswith(d) for d in WHOLE_DIRS)
            ):
                raise pytest.UsageError(
                    f"{item.nodeid} uses {fixture.argname} (scope {fixture.scope}, from "
                    f"{fixture.baseid}/conftest.py), which every xdist worker would set up "
                    "again: add its directory to WHOLE_DIRS in tests/conftest.py"
                )
