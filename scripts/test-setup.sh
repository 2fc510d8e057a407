#!/usr/bin/env bash
# Installs what the test suite needs beyond the Python virtualenv: the Redis
# server binary (tests start their own on free ports), iproute2 and the Node
# interop clients from the lockfile. Idempotent; cheap when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)  # also runs the sentinels (--sentinel)
# iproute2 for tests/integration/test_multihost.py (network namespaces; skipped when not root).
command -v ip >/dev/null || need_apt+=(iproute2)
command -v node >/dev/null || need_apt+=(nodejs npm)
# Debian's Chromium for tests/browser (playwright-core drives it; it downloads no browser).
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ -f package-lock.json ] && { [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  npm ci --no-audit --no-fund --loglevel=error
fi
