#!/usr/bin/env bash
# The project's one test command (README and .ci/run both use it).
# Lint, type-check, then pytest; pytest's exit code 5 (no tests collected) fails.
# pytest runs on BENCHOP_TEST_WORKERS pytest-xdist workers (default 3: most tests wait on
# processes, sockets and timers far more than they compute, docs/testing.md has the figures);
# tests/conftest.py sends each test file, and tests/cluster and tests/realserver as a whole, to
# one worker. `bash hack/test.sh -n 0` runs them all in one process.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ruff check . || exit 1
ruff format --check . || exit 1
mypy || exit 1
python -m pytest -n "${BENCHOP_TEST_WORKERS:-3}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
