#!/usr/bin/env bash
# End-to-end tests: packs @photonranch/datastream, installs the tarball into the demo as a user
# would, builds the demo with Vite, then drives it in headless Chromium against real relays.
# Needs scripts/setup-test-deps.sh and scripts/setup-client-deps.sh to have run.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$ROOT"

bash scripts/build-demo.sh
cargo build --locked -p datastream
export DATASTREAM_BIN="$CARGO_TARGET_DIR/debug/datastream"

cd tests/e2e
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
node --test --test-concurrency=1 dashboard.test.mjs
