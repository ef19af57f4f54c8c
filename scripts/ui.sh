#!/usr/bin/env bash
# Builds the browser UI bundle (ui/dist) that vireod embeds, idempotently: `npm ci` only when
# ui/package-lock.json changed since the last install, `npm run build` only when an input is
# newer than the bundle (an unchanged bundle keeps its mtimes, so cargo does not rebuild
# vireod for nothing). Run before `cargo build` (scripts/run.sh and scripts/test.sh do).
set -euo pipefail
cd "$(dirname "$0")/../ui"

if ! command -v npm >/dev/null || ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)'; then
  echo "vireo: Node.js >= 20.19 with npm is required to build the UI" >&2
  exit 1
fi

lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.vireo-lock-sha256
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
  echo "vireo: installing the UI's npm packages (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > "$stamp"
fi

if [ ! -f dist/index.html ] || [ -n "$(find src index.html vite.config.ts tsconfig.json package-lock.json ../openapi/vireo.json -newer dist/index.html -print -quit)" ]; then
  echo "vireo: building the UI bundle (ui/dist)" >&2
  npm run build --silent >/dev/null
fi
