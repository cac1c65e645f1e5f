#!/usr/bin/env bash
# Starts a real Kubernetes control plane on this machine, for tests and by hand:
#   etcd, kube-apiserver (RBAC + Node authorization, admission incl. NodeRestriction and
#   OwnerReferencesPermissionEnforcement, audit log, service-account token signing),
#   kube-controller-manager (every default controller, each with its own service account),
#   kube-scheduler, and the test kubelet (tests/cluster/testkubelet: pods as local processes,
#   each in its own network namespace on the bridge bnp0, 10.244.0.0/16).
# Usage:  eval "$(hack/kube-up.sh)"     # prints `export KUBECONFIG=...` on stdout
#         hack/kube-down.sh             # stops everything, removes the network
# Env:    BENCHOP_KUBE_DIR   state dir (default /tmp/benchop-kube): pki, kubeconfigs, logs, data
#         BENCHOP_KUBE_NODES nodes of the test kubelet (default "benchop-gpu:2 benchop-cpu":
#                            name[:gpus]); empty: the control plane only, no kubelet
#         BENCHOP_KUBE_SLOT  0-9 (default 0): a second control plane beside the first, with its
#                            own ports (+100 per slot), bridge bnp<slot>, pod and service CIDRs
#                            (10.<244+slot>/16, 10.<96+slot>/16) and default dir /tmp/benchop-kube-<slot>
#         BENCHOP_KUBE_EXTRA_KCM_ARGS extra kube-controller-manager flags (fault scenarios)
# Idempotent: a component whose process is alive is left alone; the rest are (re)started.
# Needs root (network namespaces, mounts), Go for the first build (hack/build-controlplane.sh),
# openssl, iproute2 and python with the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

SLOT="${BENCHOP_KUBE_SLOT:-0}"
case "$SLOT" in [0-9]) ;; *) echo "kube-up: BENCHOP_KUBE_SLOT must be 0-9, not '$SLOT'" >&2; exit 2 ;; esac
if [ "$SLOT" = 0 ]; then DIR="${BENCHOP_KUBE_DIR:-/tmp/benchop-kube}"; else DIR="${BENCHOP_KUBE_DIR:-/tmp/benchop-kube-$SLOT}"; fi
NODES="${BENCHOP_KUBE_NODES-benchop-gpu:2 benchop-cpu}"
BRIDGE="bnp$SLOT"
HOST_IP="10.$((244 + SLOT)).0.1"
POD_CIDR="10.$((244 + SLOT)).0.0/16"
SERVICE_CIDR="10.$((96 + SLOT)).0.0/16"
API_SERVICE_IP="10.$((96 + SLOT)).0.1"
API_PORT=$((6443 + 100 * SLOT))
ETCD_PORT=$((23790 + 100 * SLOT))
ETCD_PEER_PORT=$((23800 + 100 * SLOT))
KCM_PORT=$((10257 + 100 * SLOT))
SCHEDULER_PORT=$((10259 + 100 * SLOT))
KUBELET_PORT=$((10250 + 100 * SLOT))
ISSUER=https://kubernetes.default.svc.cluster.local

log() { printf 'kube-up: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and mounts for the test kubelet)"
# Pods run this checkout's code from its path, and the chart's pods mount an emptyDir on /tmp:
# a checkout under /tmp would be hidden from them (benchop not found, a crash loop).
case "$REPO/" in /tmp/*) die "the checkout $REPO is under /tmp, which the pods' own /tmp hides: clone it elsewhere" ;; esac
BIN="$(bash hack/build-controlplane.sh)"
mkdir -p "$DIR"/{pki,logs,pids,audit,etcd}
chmod 0755 "$DIR"
export PATH="$REPO/.tools/bin:$PATH"

# --------------------------------------------------------------------------- certificates
PKI="$DIR/pki"
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA.
sign() {
  local name=$1 subject=$2 ext=$3
  [ -f "$PKI/$name.crt" ] && return 0
  new_key "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile <(printf '%s\n' "$ext") \
    -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

if [ ! -f "$PKI/ca.crt" ]; then
  log "creating the cluster CA and certificates in $PKI"
  new_key "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=benchop-local-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/ca.crt"
fi
[ -f "$PKI/sa.key" ] || {
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}
client_ext="keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
sign apiserver "/CN=kube-apiserver" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$HOST_IP,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
sign admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
sign controller-manager "/CN=system:kube-controller-manager" "$client_ext"
sign scheduler "/CN=system:kube-scheduler" "$client_ext"
# The test kubelet's Service proxy reads EndpointSlices, which a node's identity may not.
sign kube-proxy "/CN=system:kube-proxy" "$client_ext"
# The kubelet API (logs, exec) the apiserver calls and verifies against the cluster CA.
sign kubelet "/CN=benchop-test-kubelet" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$HOST_IP,IP:127.0.0.1"
node_names=()
for spec in $NODES; do
  node="${spec%%:*}"
  node_names+=("$node")
  sign "node-$node" "/O=system:nodes/CN=system:node:$node" "$client_ext"
done
chmod 0600 "$PKI"/*.key

# kubeconfig FILE CERT: a kubeconfig for the client certificate pki/CERT.
kubeconfig() {
  cat >"$DIR/$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: benchop-local
    cluster:
      server: https://127.0.0.1:$API_PORT
      certificate-authority: $PKI/ca.crt
users:
  - name: $2
    user:
      client-certificate: $PKI/$2.crt
      client-key: $PKI/$2.key
contexts:
  - name: benchop-local
    context: {cluster: benchop-local, user: $2}
current-context: benchop-local
EOF
  chmod 0600 "$DIR/$1"
}
kubeconfig admin.kubeconfig admin
kubeconfig controller-manager.kubeconfig controller-manager
kubeconfig scheduler.kubeconfig scheduler
kubeconfig kube-proxy.kubeconfig kube-proxy
for node in "${node_names[@]}"; do kubeconfig "node-$node.kubeconfig" "node-$node"; done

# --------------------------------------------------------------------------- network
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "creating bridge $BRIDGE ($HOST_IP, pods $POD_CIDR)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$HOST_IP/16" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
sysctl -qw net.ipv4.ip_forward=1

# --------------------------------------------------------------------------- processes
alive() { [ -f "$DIR/pids/$1.pid" ] && kill -0 "$(cat "$DIR/pids/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run CMD in its own session, logging to logs/NAME.log, unless it runs.
start() {
  local name=$1
  shift
  if alive "$name"; then
    return 0
  fi
  log "starting $name"
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

# wait_for WHAT SECONDS CMD...: retry CMD until it succeeds; on timeout show the log tail.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$what"; then
      tail -n 30 "$DIR/logs/$what.log" >&2 || true
      die "$what exited (log: $DIR/logs/$what.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$DIR/logs/$what.log" >&2 || true
      die "$what not ready after ${seconds}s (log: $DIR/logs/$what.log)"
    fi
    sleep 0.5
  done
}

start etcd "$BIN/etcd" --name benchop --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "benchop=http://127.0.0.1:$ETCD_PEER_PORT" \
  --quota-backend-bytes 8589934592 --unsafe-no-fsync --log-level warn
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

cat >"$DIR/audit/policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Who did what (verb, resource, subresource, namespace, name, response code); no bodies.
  - level: Metadata
EOF
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$HOST_IP" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction,OwnerReferencesPermissionEnforcement \
  --service-account-issuer "$ISSUER" --api-audiences "$ISSUER" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --allow-privileged=true \
  --audit-policy-file "$DIR/audit/policy.yaml" --audit-log-path "$DIR/audit/audit.log" \
  --audit-log-maxsize 512 --audit-log-maxbackup 4 --audit-log-format json \
  --profiling=false
wait_for kube-apiserver 120 kubectl --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz

# The controller manager and scheduler authenticate and authorise their own /healthz callers
# through the apiserver (delegated), as kubeadm runs them.
# shellcheck disable=SC2086 # word-split the extra flags on purpose
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
  --use-service-account-credentials=true --controllers '*,bootstrapsigner,tokencleaner' \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  ${BENCHOP_KUBE_EXTRA_KCM_ARGS:-}
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false
wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# --------------------------------------------------------------------------- test kubelet
if [ -z "$NODES" ]; then
  log "up (no nodes): kubectl --kubeconfig $DIR/admin.kubeconfig get --raw /readyz"
  echo "export KUBECONFIG=$DIR/admin.kubeconfig"
  exit 0
fi
node_args=()
for spec in $NODES; do node_args+=(--node "$spec"); done
# the project image's processes run this checkout's code (a worktree's, not the installed one)
start testkubelet env PYTHONPATH="$REPO/tests/cluster" python3 -m testkubelet \
  --dir "$DIR" --bridge "$BRIDGE" --host-ip "$HOST_IP" --pod-cidr "$POD_CIDR" \
  --service-cidr "$SERVICE_CIDR" --kubelet-port "$KUBELET_PORT" \
  --image-env "PYTHONPATH=$REPO/operator:$REPO/agent" "${node_args[@]}"
for node in "${node_names[@]}"; do
  wait_for testkubelet 60 kubectl --kubeconfig "$DIR/admin.kubeconfig" wait \
    --for=condition=Ready "node/$node" --timeout=2s
done

log "up: kubectl --kubeconfig $DIR/admin.kubeconfig get nodes"
echo "export KUBECONFIG=$DIR/admin.kubeconfig"
