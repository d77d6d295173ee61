#!/usr/bin/env bash
# Builds the container image: a static musl release binary plus CA certificates, FROM scratch.
# Usage: scripts/build-image.sh [IMAGE]      (default IMAGE: datastream:latest)
# Uses podman if present, else docker. Needs the x86_64-unknown-linux-musl target and musl-tools
# (scripts/setup-test-deps.sh installs both).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
IMAGE="${1:-datastream:latest}"
TARGET=x86_64-unknown-linux-musl

step "cargo build --release --target $TARGET"
cargo build --release --locked --target "$TARGET" -p datastream
BIN="$CARGO_TARGET_DIR/$TARGET/release/datastream"
if ! ldd "$BIN" 2>&1 | grep -qE "not a dynamic executable|statically linked"; then
  echo "error: $BIN is not statically linked" >&2
  exit 1
fi

CONTEXT="$CARGO_TARGET_DIR/image-context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
cp "$BIN" "$CONTEXT/datastream"
# Symbols stay in the build (for profiling); the image does not need them.
if command -v strip >/dev/null; then strip "$CONTEXT/datastream"; fi
cp /etc/ssl/certs/ca-certificates.crt "$CONTEXT/ca-certificates.crt"
cp container/Dockerfile "$CONTEXT/Dockerfile"

if command -v podman >/dev/null; then
  ENGINE=(podman build --format docker)
else
  ENGINE=(docker build)
fi
step "${ENGINE[*]} -t $IMAGE"
"${ENGINE[@]}" -t "$IMAGE" "$CONTEXT"
