#!/usr/bin/env bash
# Generate the protobuf-es TypeScript for the browser client into web/src/gen/
# (or the folder given as $1). Committed; tests/browser/test_web_types.py fails when stale.
# Needs `npm ci` (protoc-gen-es) and the virtualenv (grpc_tools.protoc).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-web/src/gen}"
mkdir -p "$out"
.venv/bin/python -m grpc_tools.protoc -Iproto \
  --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es \
  --es_out="$out" --es_opt=target=ts \
  gateway/v1/gateway.proto
