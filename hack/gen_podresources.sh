#!/usr/bin/env bash
# Regenerate the kubelet pod-resources gRPC stubs in agent/benchagent/podresources_pb/
# from api.proto there. Needs grpcio-tools (a dev-only tool, not a runtime dependency):
#   pip install grpcio-tools
# The generated files are committed; the agent only needs grpcio and protobuf at runtime.
set -euo pipefail
cd "$(dirname "$0")/../agent"
python -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  benchagent/podresources_pb/api.proto
# Generated code is not ours to type-check (protobuf ships no stubs; grpc's plugin
# writes untyped functions): tell mypy so in each file.
for f in benchagent/podresources_pb/api_pb2.py benchagent/podresources_pb/api_pb2.pyi \
         benchagent/podresources_pb/api_pb2_grpc.py; do
  { echo "# mypy: ignore-errors"; cat "$f"; } > "$f.tmp" && mv "$f.tmp" "$f"
done
echo "generated: $(ls benchagent/podresources_pb/api_pb2*.py*)"
