#!/usr/bin/env bash
# Delta encodings of status publications, measured: bytes on the wire per publication, the relay's
# CPU to compute one delta, the browser's time to apply one, and what each applier adds to the
# SDK. On the streams of statusgen (device status, weather status, and device status with every
# leaf restamped on every publication), 500 publications each. About 10 minutes (most of it starting xdelta3 once per VCDIFF delta).
#
#   bench/delta.sh                      # BENCH_COUNT=500 BENCH_ROUNDS=7 by default
#
# Installs what it needs on first run (xdelta3 for VCDIFF, the bench's two npm packages, and the
# SDK's tools through scripts/setup-client-deps.sh --build-only for esbuild, wasm-bindgen and
# wasm-opt; Chromium from Debian). Writes bench/results/<time>-delta/results.md.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
source "$ROOT/scripts/client-env.sh"

COUNT=${BENCH_COUNT:-500}
ROUNDS=${BENCH_ROUNDS:-7}
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-delta"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

command -v xdelta3 >/dev/null || need_apt xdelta3
command -v chromium >/dev/null || need_apt chromium
command -v wasm-opt >/dev/null && command -v wasm-bindgen >/dev/null && command -v esbuild >/dev/null \
    || scripts/setup-client-deps.sh --build-only
[ -d bench/delta/node_modules/fossil-delta ] || (cd bench/delta && npm ci --no-audit --no-fund --silent)

step "build (release: deltabench; wasm-release: the wasm applier and its baseline)"
cargo build --quiet --release -p datastream-deltabench
for variant in applier baseline; do
    features=()
    [ "$variant" = baseline ] && features=(--features baseline)
    cargo build --quiet -p datastream-delta-wasm --target wasm32-unknown-unknown --profile wasm-release "${features[@]}"
    wasm-bindgen --target web --out-dir "$WORK/wasm-$variant" \
        "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/datastream_delta_wasm.wasm"
    # The flags npm/build.sh gives the SDK's module.
    wasm-opt -Oz --strip-debug --strip-producers \
        --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$WORK/wasm-$variant/datastream_delta_wasm_bg.wasm" -o "$WORK/wasm-applier/$variant.wasm"
done

step "relay side: sizes and CPU ($COUNT publications per stream)"
nice -n "${BENCH_NICE:--10}" "$CARGO_TARGET_DIR/release/deltabench" --count "$COUNT" --rounds "$ROUNDS" \
    --out "$WORK/data" | tee "$OUT/results.md"

step "browser side: apply time in headless Chromium, applier sizes"
node bench/delta/apply.mjs --data "$WORK/data" --rounds "$ROUNDS" --wasm "$WORK/wasm-applier" | tee -a "$OUT/results.md"
echo
echo "results: ${OUT#"$ROOT"/}/results.md"
