#!/usr/bin/env bash
# Installs benchop and everything its tests use, on a fresh Debian machine with Python >= 3.11.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
