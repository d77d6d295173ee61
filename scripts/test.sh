#!/usr/bin/env bash
# The whole test suite: installs every test dependency (idempotent; a warm run skips all of it),
# then runs formatting, lint and dependency checks, the Rust tests, the container test, the
# browser SDK's tests (native, headless Chrome and Firefox, npm package), the end-to-end tests of
# the demo in headless Chromium, the AWS template's validation, the cluster failure scenarios
# (tests/cluster/), and a smoke run of the benchmark. Services (moto_server,
# redis-server, relay nodes, browsers, the container) are started and stopped by the tests.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

bash scripts/setup-test-deps.sh
bash scripts/setup-client-deps.sh
source scripts/client-env.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny (licenses, bans, sources)"
cargo deny --locked check bans licenses sources

step "cargo test"
cargo test --workspace --locked

step "status stream generator: the JavaScript twin gives the Rust one's streams byte for byte"
node --test statusgen/

step "AWS template (cfn-lint and the relay's settings, offline)"
bash tests/cluster/aws-template.sh

step "container image"
bash tests/container/test.sh

step "browser SDK"
bash scripts/test-client.sh

step "end-to-end: the demo in headless Chromium"
bash tests/e2e/run.sh

step "cluster: failures under load behind HAProxy (kill -9, rolling restart, Redis, SQS; ~3 min)"
bash tests/cluster/failures.sh

step "benchmark smoke run (seconds, tiny N)"
bash bench/smoke.sh
# The heartbeat measurement, tiny: it checks the subscribers got exactly the pings expected.
bash bench/heartbeat.sh 50 relay 3
bash bench/heartbeat.sh 50 relay-v2 3
