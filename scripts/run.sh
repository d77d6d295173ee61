#!/usr/bin/env bash
# Builds what is needed and runs the relay with the demo dashboard on the embedded default
# (in-memory broker, HTTP publish, demo publisher; no AWS needed):
#   - the wasm toolchain for the SDK (first run only: a few minutes), via setup-client-deps.sh;
#   - @photonranch/datastream, packed and installed into the demo, and the demo (Vite);
#   - the relay (release).
# Then open http://127.0.0.1:8080/. Any DATASTREAM_* setting in the environment applies; extra
# arguments go to the binary (e.g. --log-format json).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

bash scripts/setup-client-deps.sh --build-only
source scripts/client-env.sh
bash scripts/build-demo.sh

step "cargo build --release"
cargo build --release --locked -p datastream

export DATASTREAM_LISTEN="${DATASTREAM_LISTEN:-127.0.0.1:8080}"
export DATASTREAM_STATIC_DIR="${DATASTREAM_STATIC_DIR:-$ROOT/demo/dist}"
export DATASTREAM_DEMO="${DATASTREAM_DEMO:-true}"
step "datastream on http://$DATASTREAM_LISTEN/ (Ctrl-C to stop)"
exec "$CARGO_TARGET_DIR/release/datastream" serve "$@"
