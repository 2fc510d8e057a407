#!/usr/bin/env bash
# Generate the protobuf-es modules (JavaScript, ESM) that the Node interop
# clients import, from every file under proto/, into tests/interop/node/gen/
# (or the folder given as $1). The output is committed, so tests never run
# codegen; tests/interop/test_gen_es_fresh.py fails when it is stale.
# Needs `npm ci` (protoc-gen-es) and the virtualenv (grpc_tools.protoc).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-tests/interop/node/gen}"
mkdir -p "$out"
mapfile -t protos < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
.venv/bin/python -m grpc_tools.protoc -Iproto \
  --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es \
  --es_out="$out" --es_opt=target=js,import_extension=js \
  "${protos[@]}"
