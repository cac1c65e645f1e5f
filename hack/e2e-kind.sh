#!/usr/bin/env bash
# End-to-end test on a throw-away kind cluster:
#   create the cluster -> build the image and load it into kind -> helm install the chart ->
#   deploy the mock model server -> apply a BenchmarkRun against it ->
#   wait for Succeeded (kubectl wait) -> print `kubectl get br -o wide` -> delete the cluster.
# Needs: docker (with a running engine), kind, kubectl, helm (hack/install-tools.sh puts the
# pinned helm and kubectl in .tools/bin, which this script puts first on PATH).
# Env: KIND_CLUSTER (default benchop-e2e), KEEP_CLUSTER=1 keeps it afterwards,
#      SKIP_BUILD=1 reuses an existing benchop:e2e image,
#      RUN_TIMEOUT_SECONDS (default 600) bounds the wait for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${BENCHOP_TOOLS_BIN:-$PWD/.tools/bin}:$PATH"

CLUSTER="${KIND_CLUSTER:-benchop-e2e}"
IMAGE="benchop:e2e" # the tag tests/e2e/values-kind.yaml and the scenario manifests use
RELEASE_NS="benchop-system"
RUN_NS="benchop-e2e"
SCENARIO="tests/e2e/scenarios/smoke"
RUN_NAME="smoke"
RUN_TIMEOUT_SECONDS="${RUN_TIMEOUT_SECONDS:-600}"

log() { printf '\n=== e2e: %s\n' "$*" >&2; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e: $tool not found" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e: no Docker engine answers (docker info)" >&2; exit 2; }
# A private kubeconfig: never touch the user's current context.
KUBECONFIG_FILE="$(mktemp)"
export KUBECONFIG="$KUBECONFIG_FILE"

diagnostics() {
  log "diagnostics"
  kubectl get nodes -o wide || true
  kubectl get pods -A -o wide || true
  kubectl -n "$RUN_NS" get br,jobs,pods -o wide || true
  kubectl -n "$RUN_NS" get br "$RUN_NAME" -o yaml || true
  kubectl -n "$RUN_NS" get events --sort-by=.lastTimestamp || true
  kubectl -n "$RELEASE_NS" logs deployment/benchop-operator --tail=200 || true
  kubectl -n "$RELEASE_NS" logs daemonset/benchop-agent --tail=50 || true
}

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    diagnostics
  fi
  if [ "${KEEP_CLUSTER:-0}" = "1" ]; then
    log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    log "deleting cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -f "$KUBECONFIG_FILE"
  exit "$rc"
}
trap cleanup EXIT

log "cluster $CLUSTER"
clusters="$(kind get clusters 2>/dev/null || true)"  # captured: `kind ... | grep -q` races SIGPIPE under pipefail
if grep -qx "$CLUSTER" <<<"$clusters"; then
  kind export kubeconfig --name "$CLUSTER"
else
  kind create cluster --name "$CLUSTER" --wait 120s
fi

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  log "build $IMAGE"
  bash hack/build-image.sh "$IMAGE"
fi
log "load $IMAGE into kind"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "helm install"
helm upgrade --install benchop charts/benchop \
  --namespace "$RELEASE_NS" --create-namespace \
  -f tests/e2e/values-kind.yaml \
  --wait --timeout 300s
kubectl wait --for=condition=Established --timeout=60s \
  crd/benchmarkruns.benchop.io crd/experiments.benchop.io

log "mock model server"
kubectl create namespace "$RUN_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f "$SCENARIO/mock-server.yaml"
kubectl -n "$RUN_NS" rollout status deployment/mock-llm --timeout=180s

log "BenchmarkRun $RUN_NAME"
kubectl apply -f "$SCENARIO/run.yaml"
# Succeeded is True on success, False (and its mirror Failed True) on failure. `kubectl wait`
# cannot wait for "True or False", so wait in short slices and fail fast on False.
deadline=$(( $(date +%s) + RUN_TIMEOUT_SECONDS ))
until kubectl -n "$RUN_NS" wait --for=condition=Succeeded "br/$RUN_NAME" --timeout=15s 2>/dev/null; do
  status="$(kubectl -n "$RUN_NS" get br "$RUN_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].status}' 2>/dev/null || true)"
  if [ "$status" = "False" ]; then
    echo "e2e: $RUN_NAME failed:" >&2
    kubectl -n "$RUN_NS" get br "$RUN_NAME" \
      -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2
    exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "e2e: $RUN_NAME not Succeeded after ${RUN_TIMEOUT_SECONDS}s (phase: $(kubectl -n "$RUN_NS" \
      get br "$RUN_NAME" -o jsonpath='{.status.phase}' 2>/dev/null || true))" >&2
    exit 1
  fi
  kubectl -n "$RUN_NS" get br "$RUN_NAME" --no-headers 2>/dev/null || true
done

log "results"
kubectl -n "$RUN_NS" get br -o wide
kubectl -n "$RUN_NS" get br "$RUN_NAME" -o jsonpath='{.status.results}{"\n"}'
echo "e2e: PASS ($RUN_NAME Succeeded)"
