#!/usr/bin/env bash
# Builds the relay and runs it on the embedded default (in-memory broker, HTTP publish, no AWS).
# Any DATASTREAM_* setting in the environment applies; extra arguments go to the binary.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

step "cargo build --release"
cargo build --release --locked -p datastream

export DATASTREAM_LISTEN="${DATASTREAM_LISTEN:-127.0.0.1:8080}"
step "datastream on http://$DATASTREAM_LISTEN (Ctrl-C to stop)"
exec "$CARGO_TARGET_DIR/release/datastream" "$@"
