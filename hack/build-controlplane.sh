#!/usr/bin/env bash
# Builds a real Kubernetes control plane from Kubernetes' own Go modules into .tools/:
#   kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes) and etcd
#   (go.etcd.io/etcd/server/v3), at the versions pinned in hack/controlplane/go.mod.
# Usage: bash hack/build-controlplane.sh        # prints the bin directory on stdout
# Idempotent: when the binaries of the pinned versions are there it only says so (< 1 s).
# Needs Go >= 1.26 and the Go module proxy. Cold (empty module and build caches): ~20-30 min
# on 2 cores; the time is printed. Warm (Go caches kept, binaries gone): a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

MOD=hack/controlplane
# pinned MODULE: its version in a require line of go.mod (block or single-line form).
pinned() { awk -v m="$1" '/^[[:space:]]*\/\//{next} {for (i = 1; i < NF; i++) if ($i == m) {print $(i + 1); exit}}' "$MOD/go.mod"; }
k8s_version="$(pinned k8s.io/kubernetes)"
etcd_version="$(pinned go.etcd.io/etcd/server/v3)"
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
  echo "build-controlplane: cannot read the pinned versions from $MOD/go.mod" >&2
  exit 1
fi
OUT="${BENCHOP_CONTROLPLANE_DIR:-$PWD/.tools/controlplane/$k8s_version-etcd-$etcd_version}"
BINS=(kube-apiserver kube-controller-manager kube-scheduler etcd)
STAMP="$OUT/.built"

log() { printf 'build-controlplane: %s\n' "$*" >&2; }

built() {
  [ -f "$STAMP" ] || return 1
  local b
  for b in "${BINS[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done
}

if built; then
  log "kubernetes $k8s_version and etcd $etcd_version already in $OUT/bin"
  echo "$OUT/bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "go not found (Go >= 1.26 is needed)"; exit 1; }
log "building kubernetes $k8s_version and etcd $etcd_version with $(go version | cut -d' ' -f3)"
start=$(date +%s)
mkdir -p "$OUT/bin"
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
# The version the binaries report (kubectl, helm's kubeVersion checks): without it, v0.0.0.
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
(
  cd "$MOD"
  go build -trimpath -ldflags "$ldflags" -o "$OUT/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd" ./etcd
)
touch "$STAMP"
log "built in $(($(date +%s) - start)) s into $OUT/bin"
echo "$OUT/bin"
