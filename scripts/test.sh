#!/usr/bin/env bash
# The whole test suite: installs test dependencies (idempotent), then runs formatting and lint
# checks and every test. Services (moto_server, …) are started and stopped by the tests themselves.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

bash scripts/setup-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
