#!/usr/bin/env bash
# Builds the benchop container image (Dockerfile at the repository root).
# Usage: hack/build-image.sh [IMAGE]      default IMAGE: benchop:dev
#        PLATFORM=linux/arm64 hack/build-image.sh ghcr.io/benchop/benchop:0.1.0
# Needs a Docker engine (BuildKit); these development machines have none.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-${IMAGE:-benchop:dev}}"
if ! docker info >/dev/null 2>&1; then
  echo "build-image: no Docker engine answers (docker info failed); cannot build $image" >&2
  exit 2
fi
platform_args=()
if [ -n "${PLATFORM:-}" ]; then
  platform_args=(--platform "$PLATFORM")
fi
DOCKER_BUILDKIT=1 docker build "${platform_args[@]}" -t "$image" -f Dockerfile .
docker run --rm "$image" version
echo "build-image: built $image"
