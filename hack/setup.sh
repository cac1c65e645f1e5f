#!/usr/bin/env bash
# Installs benchop and everything its checks and tests use, on a fresh Debian machine with
# Python >= 3.11: the package with its dev extras, Debian's prometheus (for the Prometheus
# tests), wrk (load-generator benchmark), shellcheck and chromium + chromium-driver (the
# report's browser test), a pinned helm + kubectl
# (hack/install-tools.sh), the real control plane of the `cluster` tests
# (hack/build-controlplane.sh, needs Go) and the real model server of the `realserver` tests
# (hack/install-llama.sh: compiles llama-cpp-python once, minutes, then reuses the wheel).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'

missing=()
for pkg_bin in prometheus:prometheus wrk:wrk shellcheck:shellcheck chromium:chromium \
  chromium-driver:chromedriver; do
  command -v "${pkg_bin#*:}" >/dev/null 2>&1 || missing+=("${pkg_bin%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, cannot install ${missing[*]}; tests that need them will skip and say so" >&2
  fi
fi

# What setup downloads and builds into .tools (helm and kubectl, checkov, the control plane, the
# llama.cpp wheel and model: each under a name that carries its version) is kept once per
# machine, in BENCHOP_TOOLS_CACHE (default ~/.cache/benchop/tools), and .tools links to it, so a
# fresh clone reuses it. A .tools directory already there is used as it is.
if [ ! -e .tools ] && [ ! -L .tools ]; then
  cache="${BENCHOP_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/benchop/tools}"
  mkdir -p "$cache"
  ln -s "$cache" .tools
fi

if [ -f hack/install-tools.sh ]; then
  bash hack/install-tools.sh
fi

# The real control plane of the `cluster` tests (hack/kube-up.sh), built from Kubernetes' Go
# modules: ~15-30 min cold, seconds once built.
if command -v go >/dev/null 2>&1; then
  bash hack/build-controlplane.sh >/dev/null
elif [ "${CI:-}" = "true" ]; then
  echo "setup: Go not found: the real control plane cannot be built (CI=true: failing)" >&2
  exit 1
else
  echo "setup: Go not found: the cluster tests will skip and say so" >&2
fi

bash hack/install-llama.sh
