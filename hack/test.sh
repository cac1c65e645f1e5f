#!/usr/bin/env bash
# The project's one test command (README and .ci/run both use it).
# Lint, type-check, then pytest; pytest's exit code 5 (no tests collected) fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ruff check . || exit 1
ruff format --check . || exit 1
mypy || exit 1
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
