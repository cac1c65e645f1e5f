#!/usr/bin/env bash
# Stops what hack/kube-up.sh started: the test kubelet first (it stops its pods and removes
# their network namespaces), then the scheduler, the controller manager, the apiserver and
# etcd; then removes the bridge. Keeps the state dir (certificates, etcd data, logs) unless
# --purge is given. Usage: hack/kube-down.sh [--purge]
#        hack/kube-down.sh --only NAME   stops one component (etcd, kube-apiserver,
#          kube-controller-manager, kube-scheduler, testkubelet) and nothing else; hack/kube-up.sh
#          starts it again (it starts whatever is not running): the fault suite's restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
SLOT="${BENCHOP_KUBE_SLOT:-0}"
if [ "$SLOT" = 0 ]; then DIR="${BENCHOP_KUBE_DIR:-/tmp/benchop-kube}"; else DIR="${BENCHOP_KUBE_DIR:-/tmp/benchop-kube-$SLOT}"; fi
BRIDGE="bnp$SLOT"

log() { printf 'kube-down: %s\n' "$*" >&2; }

# stop NAME SECONDS: SIGTERM the process group, SIGKILL it after SECONDS.
stop() {
  local name=$1 seconds=$2 pidfile="$DIR/pids/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(($(date +%s) + seconds))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${seconds}s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = "--only" ]; then
  case "${2:-}" in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler) stop "$2" 20 ;;
    testkubelet) stop testkubelet 60 ;;
    *) log "--only takes etcd, kube-apiserver, kube-controller-manager, kube-scheduler or testkubelet" ; exit 2 ;;
  esac
  exit 0
fi
stop testkubelet 60
stop kube-scheduler 10
stop kube-controller-manager 10
stop kube-apiserver 20
stop etcd 10
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "removing bridge $BRIDGE"
  ip link del "$BRIDGE"
fi
if [ "${1:-}" = "--purge" ]; then
  log "removing $DIR"
  rm -rf "$DIR"
fi
