#!/usr/bin/env bash
# Builds the demo dashboard as a user of the SDK would: builds and packs @photonranch/datastream
# (npm pack), installs that tarball into demo/, and builds the page with Vite into demo/dist.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

step "build @photonranch/datastream"
bash npm/build.sh
PACK_DIR="$CARGO_TARGET_DIR/npm-pack"
rm -rf "$PACK_DIR" && mkdir -p "$PACK_DIR"
TARBALL="$PACK_DIR/$(cd npm && npm pack --silent --pack-destination "$PACK_DIR" | tail -n 1)"

step "demo: npm install (with the packed tarball) and vite build"
cd demo
npm ci --no-audit --no-fund --silent
npm install --no-save --no-audit --no-fund --silent "$TARBALL"
npx vite build --logLevel warn
echo "demo built in demo/dist"
